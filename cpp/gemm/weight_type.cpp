#include "gemm/weight_type.h"

#include <stdexcept>

namespace pyattn::gemm {

std::string weight_type_names(bool blocks_only) {
    std::string names;
    for (const auto& t : kWeightTypes)
        if (!blocks_only || t.family == WeightFamily::block) names += (names.empty() ? "" : ", ") + std::string(t.name);
    return names;
}

WeightType parse_weight_type(const std::string& name) {
    for (const auto& t : kWeightTypes)
        if (name == t.name) return t.type;
    throw std::invalid_argument("unknown weight type '" + name + "': expected one of " + weight_type_names());
}

}  // namespace pyattn::gemm

#include "ops/layer_norm.h"

#include "cpu/cpu.h"

namespace pyattn::ops {

void layer_norm(const float* x, int64_t ldx, float* y, int64_t ldy, int64_t rows, int64_t n, const float* weight,
                const float* bias, float eps) {
    const auto& ks = cpu::active();
    const int nt = cpu::threads_for(8.0 * rows * n);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (int64_t r = 0; r < rows; ++r) ks.layer_norm(x + r * ldx, y + r * ldy, weight, bias, n, eps);
}

}  // namespace pyattn::ops

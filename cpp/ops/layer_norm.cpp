#include "ops/layer_norm.h"

#include <algorithm>

#include "cpu/cpu.h"

namespace pyattn::ops {

void layer_norm(const float* x, int64_t ldx, float* y, int64_t ldy, int64_t rows, int64_t n, const float* weight,
                const float* bias, float eps, const float* residual, int64_t ldr) {
    const auto& ks = cpu::active();
    const int nt = cpu::threads_for(8.0 * rows * n);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (int64_t r = 0; r < rows; ++r) {
        const float* src = x + r * ldx;
        float* dst = y + r * ldy;
        if (residual) {  // the sum stays in L1: one row is a few KiB
            if (dst != src) std::copy(src, src + n, dst);
            ks.add(dst, residual + r * ldr, n);
            src = dst;
        }
        ks.layer_norm(src, dst, weight, bias, n, eps);
    }
}

}  // namespace pyattn::ops

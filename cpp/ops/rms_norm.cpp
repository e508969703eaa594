#include "ops/rms_norm.h"

#include "cpu/cpu.h"

namespace pyattn::ops {

void rms_norm(const float* x, int64_t ldx, float* y, int64_t ldy, int64_t rows, int64_t n, const float* weight,
              float eps, float* residual, int64_t ldr) {
    const auto& ks = cpu::active();
    cpu::parallel_rows(cpu::threads_for(6.0 * rows * n), rows, [&](int64_t r) {
        const float* src = x + r * ldx;
        if (residual) {  // the stream's row stays in L1 between the add and the norm
            float* res = residual + r * ldr;
            ks.add(res, src, n);
            src = res;
        }
        ks.rms_norm(src, y + r * ldy, weight, n, eps);
    });
}

}  // namespace pyattn::ops

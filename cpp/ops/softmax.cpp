#include "ops/softmax.h"

#include <cmath>
#include <limits>

#include "cpu/cpu.h"

namespace pyattn::ops {

void softmax(const float* x, int64_t ldx, float* y, int64_t ldy, int64_t rows, int64_t n) {
    const auto& ks = cpu::active();
    const int nt = cpu::threads_for(20.0 * rows * n);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (int64_t r = 0; r < rows; ++r) {
        const float* xr = x + r * ldx;
        float* yr = y + r * ldy;
        const float m = ks.max(xr, n);
        if (m == -std::numeric_limits<float>::infinity()) {
            const float fill = any_nan(xr, n) ? std::numeric_limits<float>::quiet_NaN() : 0.0f;
            for (int64_t j = 0; j < n; ++j) yr[j] = fill;
            continue;
        }
        const float s = ks.exp_sum(xr, yr, n, m);
        ks.scale(yr, n, 1.0f / s);
    }
}

void log_softmax(const float* x, int64_t ldx, float* y, int64_t ldy, int64_t rows, int64_t n) {
    const auto& ks = cpu::active();
    const int nt = cpu::threads_for(20.0 * rows * n);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (int64_t r = 0; r < rows; ++r) {
        const float* xr = x + r * ldx;
        float* yr = y + r * ldy;
        const float m = ks.max(xr, n);
        if (m == -std::numeric_limits<float>::infinity()) {
            const float fill = any_nan(xr, n) ? std::numeric_limits<float>::quiet_NaN() : m;
            for (int64_t j = 0; j < n; ++j) yr[j] = fill;
            continue;
        }
        // exp goes through y as scratch, then y = x - (max + log sum exp).
        const float s = ks.exp_sum(xr, yr, n, m);
        ks.add_scalar(xr, yr, n, -(m + std::log(s)));
    }
}

}  // namespace pyattn::ops

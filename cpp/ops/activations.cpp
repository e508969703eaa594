#include "ops/activations.h"

#include <algorithm>

#include "cpu/cpu.h"

namespace pyattn::ops {

void activation(const float* x, float* y, int64_t n, kernels::Activation act, const float* bias, int64_t cols) {
    const auto& ks = cpu::active();
    if (bias) {
        const int64_t rows = n / cols;
        const int nt = cpu::threads_for(10.0 * n);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
        for (int64_t r = 0; r < rows; ++r) ks.bias_act(x + r * cols, y + r * cols, bias, cols, act);
        return;
    }
    // Chunks of whole cache lines so that threads never share one.
    const int64_t chunk = 4096;
    const int64_t chunks = (n + chunk - 1) / chunk;
    const int nt = cpu::threads_for(10.0 * n);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (int64_t c = 0; c < chunks; ++c) {
        const int64_t off = c * chunk;
        ks.bias_act(x + off, y + off, nullptr, std::min(chunk, n - off), act);
    }
}

void swiglu(const float* gu, float* y, int64_t rows, int64_t F, kernels::Activation act) {
    const auto& ks = cpu::active();
    const int nt = cpu::threads_for(12.0 * rows * F);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (int64_t r = 0; r < rows; ++r) ks.gate_mul(gu + r * 2 * F, gu + r * 2 * F + F, y + r * F, F, act);
}

}  // namespace pyattn::ops

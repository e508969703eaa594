// The steps the whole-layer calls (encoder_layer, decoder_layer, cross_decoder_layer) are built from: a projection
// through a packed matrix, a residual add and a layer norm over rows of a (rows, n) row-contiguous block.
#pragma once
#include <cstdint>

#include "cpu/cpu.h"
#include "gemm/gemm.h"
#include "layers/encoder_layer.h"
#include "ops/layer_norm.h"

namespace pyattn::layers {

// c = act(a W^T + bias) (+ beta c) over M rows of a (row stride K); c's row stride ldc (0: N).
inline void project(const Projection& p, int64_t M, const float* a, float* c,
                    kernels::Activation act = kernels::Activation::none, float beta = 0.0f, int64_t ldc = 0) {
    gemm::sgemm(M, a, p.w->K(), *p.w, c, ldc ? ldc : p.w->N(), beta, gemm::Epilogue{p.bias, act});
}

// y += t over M rows of n (row-contiguous)
inline void add_rows(float* y, const float* t, int64_t M, int64_t n) {
    const auto& ks = cpu::active();
    const int nt = cpu::threads_for(2.0 * M * n);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (int64_t i = 0; i < M; ++i) ks.add(y + i * n, t + i * n, n);
}

// y = LN(x (+ residual)) over M rows of E
inline void norm(const Norm& n, int64_t M, int64_t E, const float* x, float* y, const float* residual = nullptr) {
    ops::layer_norm(x, E, y, E, M, E, n.weight, n.bias, n.eps, residual, E);
}

}  // namespace pyattn::layers

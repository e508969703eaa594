// The integer GEMM drivers: C = act(dequant(Aq Bq) + beta C + bias) for a PackedMatrix of type int8 (gemm_int8)
// or 4-bit blocks (gemm_q4).
//
// The activations are quantized once, by all threads, into a shared buffer (per row kp int16 and nb block scales, see
// Int8Kernels::quantize); then each thread walks its share of a (rows in MR groups) x (panels) grid: a block of
// quantized rows sized for L2 against each of its panels in turn, every output summing all of K in the kernel's
// registers. No K blocking in the driver (the kernel scales each block's int32 sums as it goes), no packing of B
// (prepacked at load) and none of A beyond the quantization, whose row-major int16 rows the kernels read in place.
#include <omp.h>

#include <algorithm>

#include "cpu/buffer.h"
#include "cpu/cpu.h"
#include "gemm/block_store.h"
#include "gemm/gemm.h"
#include "gemm/grid.h"
#include "gemm/packed_matrix.h"

namespace pyattn::gemm {

void quantize_rows(const kernels::KernelSet& ks, bool int8, const float* A, int64_t lda, int64_t m, int64_t K, void* q,
                   float* sa, int32_t* ta) {
    const int64_t nb = (K + kernels::kQBlock - 1) / kernels::kQBlock, kp = nb * kernels::kQBlock;
    if (int8)
        ks.i8.quantize8(A, lda, m, K, static_cast<int8_t*>(q), kp, sa, ta, nb);
    else
        ks.i8.quantize(A, lda, m, K, static_cast<int16_t*>(q), kp, sa, nb);
}

const float* scaled_input(const PackedMatrix& B, const float* A, int64_t lda, int64_t m, int64_t& ld) {
    const float* a = B.input_scale();
    ld = lda;
    if (a == nullptr) return A;
    const int64_t K = B.K();
    float* t = scratch<Slot::gemm_scaled_a>(static_cast<std::size_t>(m * K));
    for (int64_t i = 0; i < m; ++i)
        for (int64_t p = 0; p < K; ++p) t[i * K + p] = A[i * lda + p] * a[p];
    ld = K;
    return t;
}

void gemm_int8(int64_t M, const float* A, int64_t lda, const PackedMatrix& B, float* C, int64_t ldc, float beta,
               const Epilogue& ep, int nthreads) {
    if (M <= 0) return;
    const kernels::KernelSet& ks = B.kernels();
    const kernels::Int8Kernels& k8 = ks.i8;
    const int64_t N = B.N(), K = B.K(), nb = B.nblocks(), kp = nb * kernels::kQBlock;
    const bool tall = k8.tall_for(M);  // more rows than a tile holds, but few: one pass over each panel for all
    const int mr = tall ? k8.tall_mr : k8.mr, nr = k8.nr;
    const kernels::Int8Kernel kernel = tall ? k8.tall : k8.tile;
    const int64_t panels = (N + nr - 1) / nr;
    int nt = nthreads > 0 ? nthreads : cpu::threads_for(2.0 * M * N * K);
    if (omp_in_parallel()) nt = 1;
    const bool int8 = k8.int8_a();
    const int64_t abytes = int8 ? 1 : 2;  // per quantized value of A
    char* q =
        reinterpret_cast<char*>(scratch<Slot::gemm_quantized_a>(static_cast<std::size_t>(M * kp * abytes + 3) / 4));
    float* sa = scratch<Slot::gemm_a_scales>(static_cast<std::size_t>(M * nb));
    int32_t* ta =
        int8 ? reinterpret_cast<int32_t*>(scratch<Slot::gemm_a_sums>(static_cast<std::size_t>(M * nb))) : nullptr;
    const Grid grid = choose_grid(nt, M, mr, panels);
    // Rows of Aq per block: about 192 KiB, so that the block stays in L2 while the thread's panels stream past.
    const int64_t mc = std::max<int64_t>(mr, (192 * 1024 / (kp * abytes)) / mr * mr);
    const float* bias = ep.bias;
    const int64_t ahead = kernels::stream_prefetch_bytes;  // for a panel's first row tile (kernels.h)
    const bool act = ep.act != kernels::Activation::none;

#pragma omp parallel num_threads(nt) if (nt > 1)
    {
#pragma omp for schedule(static)
        for (int64_t i0 = 0; i0 < M; i0 += 8) {
            const int64_t m = std::min<int64_t>(8, M - i0);
            int64_t ld;
            const float* a = scaled_input(B, A + i0 * lda, lda, m, ld);
            quantize_rows(ks, int8, a, ld, m, K, q + i0 * kp * abytes, sa + i0 * nb, int8 ? ta + i0 * nb : nullptr);
        }

        const int tid = omp_get_thread_num(), nth = omp_get_num_threads();
        const Grid g = nth == nt ? grid : Grid{1, 1};
        const int ri = tid / g.tc, ci = tid % g.tc;
        int64_t r0, r1;
        grid_rows(M, mr, g.tr, ri, r0, r1);
        const int64_t q0 = panels * ci / g.tc, q1 = panels * (ci + 1) / g.tc;
        alignas(64) float tile[16 * 64];  // >= mr x nr of every kernel set
        for (int64_t ic = r0; ic < r1; ic += mc) {
            const int64_t ie = std::min(ic + mc, r1);
            for (int64_t pq = q0; pq < q1; ++pq) {
                const int8_t* b = B.panel_i8(pq);
                const float* sw = B.panel_scales(pq);
                const int64_t j = pq * nr, n = std::min<int64_t>(nr, N - j);
                for (int64_t i = ic; i < ie; i += mr) {
                    const int64_t m = std::min<int64_t>(mr, ie - i);
                    store_panel(
                        [&](float* out, int64_t ld, const float* bb) {
                            kernel(m, nb, q + i * kp * abytes, kp, sa + i * nb, int8 ? ta + i * nb : nullptr, nb, b, sw,
                                   out, ld, bb, i == ic ? ahead : 0);
                        },
                        m, n, nr, C + i * ldc + j, ldc, beta, bias ? bias + j : nullptr, tile);
                }
            }
            // The activation over whole row segments once the block is done (as the float driver does).
            const int64_t j0 = q0 * nr, j1 = std::min<int64_t>(q1 * nr, N);
            if (act && j1 > j0)
                for (int64_t i = ic; i < ie; ++i)
                    ks.bias_act(C + i * ldc + j0, C + i * ldc + j0, nullptr, j1 - j0, ep.act);
        }
    }
}

void gemm_q4(int64_t M, const float* A, int64_t lda, const PackedMatrix& B, float* C, int64_t ldc, float beta,
             const Epilogue& ep, int nthreads) {
    if (M <= 0) return;
    const kernels::KernelSet& ks = B.kernels();
    const kernels::Q4Kernel kernel = ks.q4.tile[B.has_min() ? 1 : 0];
    const int64_t N = B.N(), K = B.K(), nb = B.nblocks(), kp = nb * kernels::kQBlock;
    const int mr = ks.q4.mr, nr = kernels::kQ4Cols;
    const int64_t panels = (N + nr - 1) / nr;
    int nt = nthreads > 0 ? nthreads : cpu::threads_for(2.0 * M * N * K);
    if (omp_in_parallel()) nt = 1;
    int8_t* q = reinterpret_cast<int8_t*>(scratch<Slot::gemm_quantized_a>(static_cast<std::size_t>(M * kp + 3) / 4));
    int32_t* ta = reinterpret_cast<int32_t*>(scratch<Slot::gemm_a_sums>(static_cast<std::size_t>(M * nb)));
    float* sa = scratch<Slot::gemm_a_scales>(static_cast<std::size_t>(M * nb));
    const Grid grid = choose_grid(nt, M, mr, panels);
    const int64_t mc = std::max<int64_t>(mr, (192 * 1024 / kp) / mr * mr);  // rows of Aq per block: ~192 KiB
    const float* bias = ep.bias;
    const int64_t ahead = kernels::stream_prefetch_bytes;  // for a panel's first row tile (kernels.h)
    const bool act = ep.act != kernels::Activation::none;

#pragma omp parallel num_threads(nt) if (nt > 1)
    {
#pragma omp for schedule(static)
        for (int64_t i0 = 0; i0 < M; i0 += 8) {
            const int64_t m = std::min<int64_t>(8, M - i0);
            quantize_rows(ks, true, A + i0 * lda, lda, m, K, q + i0 * kp, sa + i0 * nb, ta + i0 * nb);
        }

        const int tid = omp_get_thread_num(), nth = omp_get_num_threads();
        const Grid g = nth == nt ? grid : Grid{1, 1};
        const int ri = tid / g.tc, ci = tid % g.tc;
        int64_t r0, r1;
        grid_rows(M, mr, g.tr, ri, r0, r1);
        const int64_t q0 = panels * ci / g.tc, q1 = panels * (ci + 1) / g.tc;
        alignas(64) float tile[16 * kernels::kQ4Cols];
        for (int64_t ic = r0; ic < r1; ic += mc) {
            const int64_t ie = std::min(ic + mc, r1);
            for (int64_t pq = q0; pq < q1; ++pq) {
                const uint8_t* b = B.panel_q4(pq);
                const int64_t j = pq * nr, n = std::min<int64_t>(nr, N - j);
                for (int64_t i = ic; i < ie; i += mr) {
                    const int64_t m = std::min<int64_t>(mr, ie - i);
                    store_panel(
                        [&](float* out, int64_t ld, const float* bb) {
                            kernel(m, nb, q + i * kp, kp, sa + i * nb, ta + i * nb, nb, b, out, ld, bb,
                                   i == ic ? ahead : 0);
                        },
                        m, n, nr, C + i * ldc + j, ldc, beta, bias ? bias + j : nullptr, tile);
                }
            }
            const int64_t j0 = q0 * nr, j1 = std::min<int64_t>(q1 * nr, N);
            if (act && j1 > j0)
                for (int64_t i = ic; i < ie; ++i)
                    ks.bias_act(C + i * ldc + j0, C + i * ldc + j0, nullptr, j1 - j0, ep.act);
        }
    }
}

}  // namespace pyattn::gemm

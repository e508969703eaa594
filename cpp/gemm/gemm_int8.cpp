// The integer GEMM drivers: C = act(dequant(Aq Bq) + beta C + bias) for a PackedMatrix of type int8 (gemm_int8)
// or 4-bit blocks (gemm_q4).
//
// The activations are quantized once, by all threads, into a shared buffer (per row kp int16 and nb block scales, see
// Int8Kernels::quantize); then the threads share the units of a (rows in MR groups) x (panels) grid (run_units): a
// block of quantized rows sized for L2 against each panel of the unit in turn, every output summing all of K in the
// kernel's registers. No K blocking in the driver (the kernel scales each block's int32 sums as it goes), no packing of
// B (prepacked at load) and none of A beyond the quantization, whose row-major int16 rows the kernels read in place.
#include <omp.h>

#include <algorithm>
#include <cstring>

#include "cpu/buffer.h"
#include "cpu/cpu.h"
#include "cpu/steal.h"
#include "gemm/block_store.h"
#include "gemm/gemm.h"
#include "gemm/grid.h"
#include "gemm/packed_matrix.h"

namespace pyattn::gemm {

void quantize_rows(const kernels::KernelSet& ks, bool int8, const float* A, int64_t lda, int64_t m, int64_t K, void* q,
                   float* sa, int32_t* ta, bool halves) {
    const int64_t nb = (K + kernels::kQBlock - 1) / kernels::kQBlock, kp = nb * kernels::kQBlock;
    if (!int8) {
        ks.i8.quantize(A, lda, m, K, static_cast<int16_t*>(q), kp, sa, nb);
        return;
    }
    ks.i8.quantize8(A, lda, m, K, static_cast<int8_t*>(q), kp, sa, ta, nb);
    if (!halves) return;
    for (int64_t i = 0; i < m; ++i)
        for (int64_t b = 0; b < nb; ++b) {
            const int8_t* x = static_cast<const int8_t*>(q) + i * kp + b * kernels::kQBlock;
            int32_t t0 = 0;
            for (int k = 0; k < kernels::kQBlock / 2; ++k) t0 += x[k];
            ta[i * nb + b] = kernels::pack16(t0, ta[i * nb + b] - t0);
        }
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

namespace {

// Units per thread of the split dimension: enough that a thread slowed by another process (a server's event loop,
// its clients) leaves its last units to the others instead of making them wait; few enough that each unit still
// streams its panels through a block of rows. MiniLM int8 `encode_tokens` of 320 sentences, 2 threads, Zen 4, one
// process alternating stealing on and off, 20 rounds, medians: 791 / 769 and 793 / 759 sentences/s beside a process
// busy 0.5 ms in 5 or 1 ms in 10; 819 / 825 and 838 / 840 alone.
constexpr int64_t kUnitsPerThread = 8;

// The threads' work after the quantization: the grid's split dimension cut into units (rows in MR groups, at most mc
// per unit; or panels), shared by cpu::Steal. A unit walks blocks of up to mc rows against each of its panels in turn;
// tile(i, m, pq, first) computes rows [i, i + m) of panel pq (first: the panel's first row tile of a block, which
// reads it from memory and may prefetch ahead), then the activation runs over the block's row segments.
// split_panels: the threads share the panels only (where there are enough), each unit taking all the rows: for the
// wide tile, whose first row tile of a block unpacks the panel.
template <class Tile>
void run_units(const kernels::KernelSet& ks, int64_t M, int64_t N, int mr, int nr, int64_t mc, int nt,
               const Epilogue& ep, float* C, int64_t ldc, std::atomic<uint64_t>* taken, Tile&& tile,
               bool split_panels = false) {
    const int64_t panels = (N + nr - 1) / nr, groups = (M + mr - 1) / mr;
    const int tid = omp_get_thread_num(), nth = omp_get_num_threads();
    const Grid g = nth != nt ? Grid{1, 1} : split_panels && panels >= nt ? Grid{1, nt} : choose_grid(nt, M, mr, panels);
    const int64_t ub = g.tr > 1 ? std::min(mc, mr * ((groups + kUnitsPerThread * g.tr - 1) / (kUnitsPerThread * g.tr)))
                                : M;  // rows per unit
    const int64_t up = g.tc > 1 ? (panels + kUnitsPerThread * g.tc - 1) / (kUnitsPerThread * g.tc) : panels;
    const int64_t pu = (panels + up - 1) / up, units = (M + ub - 1) / ub * pu;
    const bool act = ep.act != kernels::Activation::none;
    cpu::Steal{taken, tid, nth}.run(units, [&](int64_t u) {
        const int64_t r0 = u / pu * ub, r1 = std::min(M, r0 + ub), q0 = u % pu * up, q1 = std::min(panels, q0 + up);
        for (int64_t ic = r0; ic < r1; ic += mc) {
            const int64_t ie = std::min(ic + mc, r1);
            for (int64_t pq = q0; pq < q1; ++pq)
                for (int64_t i = ic; i < ie; i += mr) tile(i, std::min<int64_t>(mr, ie - i), pq, i == ic);
            // The activation over whole row segments once the block is done (as the float driver does).
            const int64_t j0 = q0 * nr, j1 = std::min<int64_t>(q1 * nr, N);
            if (act && j1 > j0)
                for (int64_t i = ic; i < ie; ++i)
                    ks.bias_act(C + i * ldc + j0, C + i * ldc + j0, nullptr, j1 - j0, ep.act);
        }
    });
}

// Rows of A quantized by all threads, 8 at a time, shared like the units.
template <class Rows>
void quantize_units(int64_t M, std::atomic<uint64_t>* taken, Rows&& rows) {
    cpu::Steal{taken, omp_get_thread_num(), omp_get_num_threads()}.run(
        (M + 7) / 8, [&](int64_t u) { rows(u * 8, std::min<int64_t>(8, M - u * 8)); });
}

}  // namespace

void gemm_int8(int64_t M, const float* A, int64_t lda, const PackedMatrix& B, float* C, int64_t ldc, float beta,
               const Epilogue& ep, int nthreads) {
    if (M <= 0) return;
    const kernels::KernelSet& ks = B.kernels();
    const kernels::Int8Kernels& k8 = ks.i8;
    const int64_t N = B.N(), K = B.K(), nb = B.nblocks(), kp = nb * kernels::kQBlock;
    // many rows on tile hardware (AMX); a few more than a tile holds: the tall tile, one pass over each panel
    const int mr = k8.mr_for(M), nr = k8.nr;
    const kernels::Int8Kernel kernel = k8.kernel_for(M);
    int nt = nthreads > 0 ? nthreads : cpu::threads_for(2.0 * M * N * K);
    if (omp_in_parallel()) nt = 1;
    const bool int8 = k8.int8_a();
    const int64_t abytes = int8 ? 1 : 2;  // per quantized value of A
    char* q =
        reinterpret_cast<char*>(scratch<Slot::gemm_quantized_a>(static_cast<std::size_t>(M * kp * abytes + 3) / 4));
    float* sa = scratch<Slot::gemm_a_scales>(static_cast<std::size_t>(M * nb));
    int32_t* ta =
        int8 ? reinterpret_cast<int32_t*>(scratch<Slot::gemm_a_sums>(static_cast<std::size_t>(M * nb))) : nullptr;
    // Rows of Aq per block: about 192 KiB, so that the block stays in L2 while the thread's panels stream past.
    const int64_t mc = std::max<int64_t>(mr, (192 * 1024 / (kp * abytes)) / mr * mr);
    const float* bias = ep.bias;
    const int64_t ahead = kernels::stream_prefetch_bytes;  // for a panel's first row tile (kernels.h)
    const auto taken = cpu::steal_words(2, nt);

#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        quantize_units(M, taken.get(), [&](int64_t i0, int64_t m) {
            int64_t ld;
            const float* a = scaled_input(B, A + i0 * lda, lda, m, ld);
            quantize_rows(ks, int8, a, ld, m, K, q + i0 * kp * abytes, sa + i0 * nb, int8 ? ta + i0 * nb : nullptr);
        });
#pragma omp barrier
        alignas(64) float tile[16 * 64];  // >= mr x nr of every kernel set
        run_units(ks, M, N, mr, nr, mc, nt, ep, C, ldc, taken.get() + nt,
                  [&](int64_t i, int64_t m, int64_t pq, bool first) {
                      const int8_t* b = B.panel_i8(pq);
                      const float* sw = B.panel_scales(pq);
                      const int64_t j = pq * nr, n = std::min<int64_t>(nr, N - j);
                      store_panel(
                          [&](float* out, int64_t ld, const float* bb) {
                              kernel(m, nb, q + i * kp * abytes, kp, sa + i * nb, int8 ? ta + i * nb : nullptr, nb, b,
                                     sw, out, ld, bb, first ? ahead : 0);
                          },
                          m, n, nr, C + i * ldc + j, ldc, beta, bias ? bias + j : nullptr, tile);
                  });
    }
}

namespace {

// Panels [wp q, wp q + wp) of a block-type matrix (wp = kQ4Wide / kQ4Cols) as the wide tile's panel, by the kernel
// set's unpacker (kernels.h: Q4Kernels::wide); panels past the matrix's columns: zeros.
void unpack_wide(const kernels::KernelSet& ks, const PackedMatrix& B, int64_t q, uint8_t* dst) {
    using kernels::kQ4Cols;
    constexpr int64_t wp = kernels::kQ4Wide / kQ4Cols, gs = kernels::kQ4Wide * 4, ps = kQ4Cols * 4;
    const int64_t nb = B.nblocks(), panels = (B.N() + kQ4Cols - 1) / kQ4Cols;
    for (int64_t p = 0; p < wp; ++p) {
        if (q * wp + p < panels) {
            ks.q4.unpack[B.q4_kind()](B.panel_q4(q * wp + p), nb, static_cast<int>(p), dst);
            continue;
        }
        for (int64_t blk = 0; blk < nb; ++blk) {
            uint8_t* o = dst + blk * kernels::kQ4WideBlockBytes;
            for (int64_t g = 0; g < kernels::kQBlock / 4; ++g)
                std::fill(o + g * gs + p * ps, o + g * gs + (p + 1) * ps, 0);
            float* d = reinterpret_cast<float*>(o + kernels::kQBlock * kernels::kQ4Wide) + p * kQ4Cols;
            std::fill(d, d + kQ4Cols, 0.0f);
            std::fill(d + kernels::kQ4Wide, d + kernels::kQ4Wide + kQ4Cols, 0.0f);
        }
    }
}

// Rows from which gemm_q4 takes the wide tile where the set has one: the unpacking of a panel is then shared by at
// least this many rows (at 16 rows as fast as the 8-column tile at 15, Zen 4).
constexpr int64_t kWideRows = 16;
// The wide tile's blocks of rows: all of A's quantized rows up to this size, so that each panel is unpacked once, not
// once per 192 KiB of them. A from L3 costs less than the unpacking: M = 128 or 512, K = 8192, N = 2048 (an FFN's
// down projection), q4_k on 1 thread ran 1.5x faster than with 192 KiB blocks (Zen 4, 1 MiB of L2).
constexpr int64_t kWideBlockBytes = 4 << 20;

}  // namespace

void gemm_q4(int64_t M, const float* A, int64_t lda, const PackedMatrix& B, float* C, int64_t ldc, float beta,
             const Epilogue& ep, int nthreads) {
    if (M <= 0) return;
    const kernels::KernelSet& ks = B.kernels();
    const kernels::Q4Kernel kernel = ks.q4.tile[B.q4_kind()];
    const kernels::Q4WideKernel wide = M >= kWideRows && ks.q4.unpack[B.q4_kind()] ? ks.q4.wide[B.q4_kind()] : nullptr;
    const int64_t N = B.N(), K = B.K(), nb = B.nblocks(), kp = nb * kernels::kQBlock;
    const int mr = wide ? ks.q4.wide_mr[B.q4_kind()] : ks.q4.mr, nr = wide ? kernels::kQ4Wide : kernels::kQ4Cols;
    int nt = nthreads > 0 ? nthreads : cpu::threads_for(2.0 * M * N * K);
    if (omp_in_parallel()) nt = 1;
    int8_t* q = reinterpret_cast<int8_t*>(scratch<Slot::gemm_quantized_a>(static_cast<std::size_t>(M * kp + 3) / 4));
    int32_t* ta = reinterpret_cast<int32_t*>(scratch<Slot::gemm_a_sums>(static_cast<std::size_t>(M * nb)));
    float* sa = scratch<Slot::gemm_a_scales>(static_cast<std::size_t>(M * nb));
    // Rows of Aq per block: ~192 KiB (in L2 beside the panel); the wide tile's: kWideBlockBytes
    const int64_t mc = std::max<int64_t>(mr, ((wide ? kWideBlockBytes : 192 * 1024) / kp) / mr * mr);
    const float* bias = ep.bias;
    const int64_t ahead = kernels::stream_prefetch_bytes;  // for a panel's first row tile (kernels.h)
    const auto taken = cpu::steal_words(2, nt);

#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        quantize_units(M, taken.get(), [&](int64_t i0, int64_t m) {
            quantize_rows(ks, true, A + i0 * lda, lda, m, K, q + i0 * kp, sa + i0 * nb, ta + i0 * nb, B.half_sums());
        });
#pragma omp barrier
        alignas(64) float tile[16 * kernels::kQ4Wide];
        uint8_t* unpacked = wide ? reinterpret_cast<uint8_t*>(scratch<Slot::gemm_q4_wide>(
                                       static_cast<std::size_t>(nb * kernels::kQ4WideBlockBytes / 4)))
                                 : nullptr;
        run_units(
            ks, M, N, mr, nr, mc, nt, ep, C, ldc, taken.get() + nt,
            [&](int64_t i, int64_t m, int64_t pq, bool first) {
                const int64_t j = pq * nr, n = std::min<int64_t>(nr, N - j);
                if (wide && first) unpack_wide(ks, B, pq, unpacked);  // once per block of rows
                store_panel(
                    [&](float* out, int64_t ld, const float* bb) {
                        if (wide)
                            wide(m, nb, q + i * kp, kp, sa + i * nb, ta + i * nb, nb, unpacked, out, ld, bb);
                        else
                            kernel(m, nb, q + i * kp, kp, sa + i * nb, ta + i * nb, nb, B.panel_q4(pq), out, ld, bb,
                                   first ? ahead : 0);
                    },
                    m, n, nr, C + i * ldc + j, ldc, beta, bias ? bias + j : nullptr, tile);
            },
            wide != nullptr);
    }
}

}  // namespace pyattn::gemm

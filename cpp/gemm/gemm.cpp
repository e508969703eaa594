#include "gemm/gemm.h"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstring>

#include "cpu/buffer.h"
#include "cpu/cpu.h"
#include "gemm/block_store.h"
#include "gemm/grid.h"
#include "gemm/packed_matrix.h"

namespace pyattn::gemm {
namespace {

using kernels::KernelSet;

// Columns of C per epilogue pass of the blocked bfloat16 path (gemm.h: epilogue_cols): an MC-row block of them stays
// in L2 from its products to its bias and activation (192 x 128 floats: 96 KiB), and the rows are long enough that
// the calls cost little.
std::atomic<int64_t> g_epilogue_cols{128};

void apply_epilogue(const KernelSet& ks, const Epilogue& ep, float* c, int64_t ldc, int64_t m, int64_t n, int64_t col) {
    if (!ep.bias && ep.act == kernels::Activation::none) return;
    const float* bias = ep.bias ? ep.bias + col : nullptr;
    for (int64_t i = 0; i < m; ++i) ks.bias_act(c + i * ldc, c + i * ldc, bias, n, ep.act);
}

// One (MC block x panel range) task against a packed B block.
// a: the same rows of A unpacked (row stride lda): a last, partial row group goes through the rows kernel,
// which computes only its m rows instead of a full MR-row tile (M = 13 would otherwise cost 24 rows).
void macro_kernel(const KernelSet& ks, const float* ap, const float* a, int64_t lda, const float* bp, int64_t mc,
                  int64_t kc, int64_t nc, int64_t panel_begin, int64_t panel_end, float* c, int64_t ldc, float beta,
                  bool last, const Epilogue& ep, int64_t col0) {
    const int mr = ks.blocking.mr, nr = ks.blocking.nr;
    alignas(64) float tile[16 * 64];  // >= MR x NR of every kernel set
    for (int64_t q = panel_begin; q < panel_end; ++q) {
        const int64_t j = q * nr;
        const int64_t n = std::min<int64_t>(nr, nc - j);
        const float* b = bp + q * kc * nr;
        for (int64_t i = 0; i < mc; i += mr) {
            const int64_t m = std::min<int64_t>(mr, mc - i);
            float* ct = c + i * ldc + j;
            if (m == mr && n == nr) {
                ks.micro(kc, ap + i * kc, b, nr, ct, ldc, beta);
            } else if (n == nr) {
                ks.rows(m, kc, a + i * lda, lda, b, nr, ct, ldc, beta);
            } else if (m < mr) {
                ks.rows(m, kc, a + i * lda, lda, b, nr, tile, nr, 0.0f);
                store_range(tile, nr, m, 0, n, ct, ldc, beta, nullptr);
            } else {
                ks.micro(kc, ap + i * kc, b, nr, tile, nr, 0.0f);
                store_range(tile, nr, m, 0, n, ct, ldc, beta, nullptr);
            }
        }
    }
    // Bias and activation once the last K block is in, over whole row segments (an NR-wide call per tile
    // costs more in calls than in arithmetic: GELU over 16 floats at a time ran ~6x slower).
    const int64_t j0 = panel_begin * nr, j1 = std::min<int64_t>(panel_end * nr, nc);
    if (last && j1 > j0) apply_epilogue(ks, ep, c + j0, ldc, mc, j1 - j0, col0 + j0);
}

struct Problem {
    int64_t M, N, K;
    const float* A;
    int64_t lda;
    BRef B;                      // when not prepacked
    const PackedMatrix* packed;  // or this
    float* C;
    int64_t ldc;
    float beta;
    Epilogue ep;
    const uint32_t* A2 = nullptr;  // bfloat16 weights on the pair rows kernel: A as pairs (Bf16PairKernels::rows) ...
    int64_t lda2 = 0;              // ... and their row stride (pairs)
};

void run_blocked(const KernelSet& ks, const Problem& P, int nt) {
    const auto bl = ks.blocking;
    const int64_t M = P.M, N = P.N, K = P.K;
    const int64_t b_panels_max = (std::min<int64_t>(bl.nc, N) + bl.nr - 1) / bl.nr;
    const Grid grid = choose_grid(nt, M, bl.mr, b_panels_max);
    // 16-bit prepacked B is widened block by block into the shared buffer (cost amortised over M rows);
    // float prepacked B is used in place; a plain B is packed.
    const bool widen = P.packed && P.packed->type() != WeightType::f32;
    const bool shared = !P.packed || widen;
    float* shared_b = shared ? scratch<Slot::gemm_b>(static_cast<std::size_t>(b_panels_max) * bl.nr * bl.kc) : nullptr;

#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        const int tid = omp_get_thread_num(), nth = omp_get_num_threads();
        const Grid g = nth == nt ? grid : Grid{1, 1};
        const int ri = tid / g.tc, ci = tid % g.tc;
        // This thread's rows of C: whole MR groups, so only the last thread may have a partial one.
        int64_t r0, r1;
        grid_rows(M, bl.mr, g.tr, ri, r0, r1);
        float* ap = scratch<Slot::gemm_a>(static_cast<std::size_t>(bl.mc + bl.mr) * bl.kc);
        for (int64_t jc = 0; jc < N; jc += bl.nc) {
            const int64_t nc = std::min<int64_t>(bl.nc, N - jc);
            const int64_t panels = (nc + bl.nr - 1) / bl.nr;
            const int64_t q0 = panels * ci / g.tc, q1 = panels * (ci + 1) / g.tc;
            for (int64_t pc = 0; pc < K; pc += bl.kc) {
                const int64_t kc = std::min<int64_t>(bl.kc, K - pc);
                const float* bp;
                if (!shared) {
                    bp = P.packed->block(jc, pc);
                } else {
                    const int64_t s0 = panels * tid / nth, s1 = panels * (tid + 1) / nth;
                    if (widen)
                        ks.half[static_cast<int>(P.packed->half_format())].widen(
                            P.packed->block16(jc, pc) + s0 * kc * bl.nr, shared_b + s0 * kc * bl.nr,
                            (s1 - s0) * kc * bl.nr);
                    else
                        pack_b(ks, P.B.data, P.B.ld, P.B.trans, pc, kc, jc, nc, bl.nr, shared_b, s0, s1);
#pragma omp barrier
                    bp = shared_b;
                }
                const float beta = pc == 0 ? P.beta : 1.0f;
                const bool last = pc + kc >= K;
                for (int64_t ic = r0; ic < r1; ic += bl.mc) {
                    const int64_t mcb = std::min<int64_t>(bl.mc, r1 - ic);
                    ks.pack_a(P.A + ic * P.lda + pc, P.lda, mcb, kc, bl.mr, ap, 1.0f);
                    macro_kernel(ks, ap, P.A + ic * P.lda + pc, P.lda, bp, mcb, kc, nc, q0, q1, P.C + ic * P.ldc + jc,
                                 P.ldc, beta, last, P.ep, jc);
                }
                if (shared) {
#pragma omp barrier
                }
            }
        }
    }
}

// bfloat16 weights on a kernel set with a pair micro-kernel (Bf16PairKernels, kernels.h): run_blocked's loops, with
// the packed bfloat16 block regrouped into pairs of k (shared by the threads, as run_blocked widens it) and A rounded
// and packed into MR-row panels of pairs (rows past mc zero).
void pair_a(const KernelSet& ks, const float* a, int64_t lda, int64_t mc, int64_t kc, int mr, uint32_t* dst,
            float* tmp) {
    const int64_t pairs = (kc + 1) / 2;
    for (int64_t i0 = 0; i0 < mc; i0 += mr, dst += pairs * mr) {
        const int64_t rows = std::min<int64_t>(mr, mc - i0);
        pack_pairs(ks, a + i0 * lda, lda, rows, kc, dst, 1, mr, tmp);
        for (int64_t i = rows; i < mr; ++i)
            for (int64_t p = 0; p < pairs; ++p) dst[p * mr + i] = 0;
    }
}

void pair_b(const uint16_t* src, int64_t kc, int nr, uint32_t* dst) {
    for (int64_t p = 0; p < kc / 2; ++p)
        for (int j = 0; j < nr; ++j)
            dst[p * nr + j] = src[2 * p * nr + j] | static_cast<uint32_t>(src[(2 * p + 1) * nr + j]) << 16;
    if (kc & 1)
        for (int j = 0; j < nr; ++j) dst[(kc / 2) * nr + j] = src[(kc - 1) * nr + j];
}

void run_blocked_bf16(const KernelSet& ks, const Problem& P, int nt) {
    const auto bl = ks.blocking;
    const int mr = bl.mr, nr = bl.nr;
    const int64_t M = P.M, N = P.N, K = P.K;
    const int64_t b_panels_max = (std::min<int64_t>(bl.nc, N) + nr - 1) / nr;
    // A pair holds two k in the bytes of one float: K steps of two packed blocks (when kc is even, so that pairs do
    // not straddle them) keep the panels' bytes those of the float path and halve the passes over C. 4096 x 1536 x
    // 384, 1 thread: 149 GFLOP/s in steps of one block.
    const int64_t step = bl.kc % 2 == 0 ? 2 * bl.kc : bl.kc;
    // AMX tiles (Bf16PairKernels::tiles) take A as rows of pairs, and both A's rows and B's panels padded with zero
    // pairs to a multiple of 16 (a tile's row), A's rows to a multiple of 32 (two tiles)
    const auto tiles = ks.bf16pairs.tiles;
    const auto pad = [&](int64_t pairs) { return tiles ? (pairs + 15) / 16 * 16 : pairs; };
    const int64_t max_pairs = pad((step + 1) / 2);
    const Grid grid = choose_grid(nt, M, mr, b_panels_max);
    uint32_t* shared_b =
        reinterpret_cast<uint32_t*>(scratch<Slot::gemm_b>(static_cast<std::size_t>(b_panels_max * nr * max_pairs)));
    const int64_t epilogue_panels = std::max<int64_t>(1, epilogue_cols() / nr);

#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        const int tid = omp_get_thread_num(), nth = omp_get_num_threads();
        const Grid g = nth == nt ? grid : Grid{1, 1};
        const int ri = tid / g.tc, ci = tid % g.tc;
        int64_t r0, r1;
        grid_rows(M, mr, g.tr, ri, r0, r1);
        uint32_t* ap = reinterpret_cast<uint32_t*>(
            scratch<Slot::gemm_a>(static_cast<std::size_t>((bl.mc + std::max(mr, 32)) * max_pairs)));
        float* row = scratch<Slot::gemm_rounded_a>(static_cast<std::size_t>(step));  // one row of A, rounded
        alignas(64) float tile[16 * 64];
        for (int64_t jc = 0; jc < N; jc += bl.nc) {
            const int64_t nc = std::min<int64_t>(bl.nc, N - jc);
            const int64_t panels = (nc + nr - 1) / nr;
            const int64_t q0 = panels * ci / g.tc, q1 = panels * (ci + 1) / g.tc;
            for (int64_t pc = 0; pc < K; pc += step) {
                const int64_t kc = std::min<int64_t>(step, K - pc), pairs = pad((kc + 1) / 2);
                for (int64_t q = panels * tid / nth; q < panels * (tid + 1) / nth; ++q) {
                    int64_t done = 0;
                    for (int64_t sub = pc; sub < pc + kc; sub += bl.kc) {  // the packed blocks of the step
                        const int64_t skc = std::min<int64_t>(bl.kc, K - sub);
                        pair_b(P.packed->block16(jc, sub) + q * skc * nr, skc, nr, shared_b + (q * pairs + done) * nr);
                        done += (skc + 1) / 2;
                    }
                    std::fill(shared_b + (q * pairs + done) * nr, shared_b + (q + 1) * pairs * nr, 0u);
                }
#pragma omp barrier
                const float beta = pc == 0 ? P.beta : 1.0f;
                for (int64_t ic = r0; ic < r1; ic += bl.mc) {
                    const int64_t mcb = std::min<int64_t>(bl.mc, r1 - ic);
                    if (tiles) {
                        const int64_t used = (kc + 1) / 2, padded_rows = (mcb + 31) / 32 * 32;
                        pack_pairs(ks, P.A + ic * P.lda + pc, P.lda, mcb, kc, ap, pairs, 1, row);
                        for (int64_t i = 0; i < padded_rows; ++i)
                            std::fill(ap + i * pairs + (i < mcb ? used : 0), ap + (i + 1) * pairs, 0u);
                    } else {
                        pair_a(ks, P.A + ic * P.lda + pc, P.lda, mcb, kc, mr, ap, row);
                    }
                    // The panels in groups of epilogue_cols() columns, each group's bias and activation applied as
                    // soon as its last K step is in, while its block of C is still in L2.
                    for (int64_t g0 = q0; g0 < q1; g0 += epilogue_panels) {
                        const int64_t g1 = std::min(q1, g0 + epilogue_panels);
                        const int64_t j0 = g0 * nr, j1 = std::min<int64_t>(g1 * nr, nc);
                        float* cg = P.C + ic * P.ldc + jc;
                        if (tiles)
                            tiles(mcb, j1 - j0, pairs, ap, pairs, shared_b + g0 * pairs * nr, cg + j0, P.ldc, beta);
                        for (int64_t q = tiles ? g1 : g0; q < g1; ++q) {
                            const int64_t j = q * nr, n = std::min<int64_t>(nr, nc - j);
                            const uint32_t* b = shared_b + q * pairs * nr;
                            for (int64_t i = 0; i < mcb; i += mr) {
                                const int64_t m = std::min<int64_t>(mr, mcb - i);
                                float* ct = cg + i * P.ldc + j;
                                if (m == mr && n == nr) {
                                    ks.bf16pairs.micro(pairs, ap + i * pairs, b, ct, P.ldc, beta);
                                } else {
                                    ks.bf16pairs.micro(pairs, ap + i * pairs, b, tile, nr, 0.0f);
                                    store_range(tile, nr, m, 0, n, ct, P.ldc, beta, nullptr);
                                }
                            }
                        }
                        if (pc + kc >= K) apply_epilogue(ks, P.ep, cg + j0, P.ldc, mcb, j1 - j0, jc + j0);
                    }
                }
#pragma omp barrier
            }
        }
    }
}

// M <= kSmallM: no packing of A; B streams once through the rows kernel (prepacked or row-major B) or the
// dot kernel (B given transposed, i.e. weights [N, K]).
void run_small_m(const KernelSet& ks, const Problem& P, int nt) {
    const auto bl = ks.blocking;
    const int64_t M = P.M, N = P.N, K = P.K;
    const int nr = bl.nr;
    if (!P.packed && P.B.trans) {
        // Dot products with rows of W: split N into chunks of whole cache lines.
        const int64_t chunk = 16;
        const int64_t nchunks = (N + chunk - 1) / chunk;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
        for (int64_t c = 0; c < nchunks; ++c) {
            const int64_t j = c * chunk, n = std::min<int64_t>(chunk, N - j);
            ks.dot(M, n, K, P.A, P.lda, P.B.data + j * P.B.ld, P.B.ld, P.C + j, P.ldc, P.beta);
            apply_epilogue(ks, P.ep, P.C + j, P.ldc, M, n, j);
        }
        return;
    }
    const int64_t panels = (N + nr - 1) / nr;
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        alignas(64) float tile[16 * 64];
        float* edge = scratch<Slot::gemm_tile>(static_cast<std::size_t>(P.packed ? 0 : K) * nr + 16);
#pragma omp for schedule(static)
        for (int64_t q = 0; q < panels; ++q) {
            const int64_t j = q * nr, n = std::min<int64_t>(nr, N - j);
            for (int64_t i = 0; i < M; i += bl.mr) {
                const int64_t m = std::min<int64_t>(bl.mr, M - i);
                const float* a = P.A + i * P.lda;
                float* c = P.C + i * P.ldc + j;
                float* out = n == nr ? c : tile;
                const int64_t ldo = n == nr ? P.ldc : nr;
                const float beta0 = n == nr ? P.beta : 0.0f;
                if (P.packed) {
                    const int64_t jc = j / bl.nc * bl.nc;
                    const int64_t qq = (j - jc) / nr;  // panel index inside its jc block
                    for (int64_t pc = 0; pc < K; pc += bl.kc) {
                        const int64_t kc = std::min<int64_t>(bl.kc, K - pc);
                        const int64_t off = qq * kc * nr;
                        const float beta = pc == 0 ? beta0 : 1.0f;
                        if (P.A2)
                            ks.bf16pairs.rows(m, kc, P.A2 + i * P.lda2 + pc / 2, P.lda2,
                                              P.packed->block16(jc, pc) + off, nr, out, ldo, beta);
                        else if (P.packed->type() != WeightType::f32)
                            ks.half[static_cast<int>(P.packed->half_format())].rows(
                                m, kc, a + pc, P.lda, P.packed->block16(jc, pc) + off, nr, out, ldo, beta);
                        else
                            ks.rows(m, kc, a + pc, P.lda, P.packed->block(jc, pc) + off, nr, out, ldo, beta);
                    }
                } else if (n == nr) {
                    ks.rows(m, K, a, P.lda, P.B.data + j, P.B.ld, out, ldo, beta0);
                } else {
                    if (i == 0) pack_b(ks, P.B.data, P.B.ld, false, 0, K, j, n, nr, edge, 0, 1);
                    ks.rows(m, K, a, P.lda, edge, nr, out, ldo, beta0);
                }
                if (n != nr) store_range(tile, nr, m, 0, n, c, P.ldc, P.beta, nullptr);
                apply_epilogue(ks, P.ep, c, P.ldc, m, n, j);
            }
        }
    }
}

// kSmallM < M <= tall_rows with prepacked B (a short sentence through a weight): every row of A in
// registers at once, so the weight streams from memory once instead of once per MR-row group.
void run_tall(const KernelSet& ks, const Problem& P, int nt) {
    const auto bl = ks.blocking;
    const int64_t M = P.M, N = P.N, K = P.K;
    const int nr = bl.nr;
    const int vec = ks.tall_cols;  // columns of one tall call (a divisor of NR)
    const int64_t panels = (N + nr - 1) / nr;
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        float* tile = scratch<Slot::gemm_tile>(static_cast<std::size_t>(M) * vec + 16);
#pragma omp for schedule(static)
        for (int64_t q = 0; q < panels; ++q) {
            const int64_t j = q * nr;
            const int64_t jc = j / bl.nc * bl.nc, qq = (j - jc) / nr;
            for (int64_t h = 0; h < nr && j + h < N; h += vec) {
                const int64_t n = std::min<int64_t>(vec, N - j - h);
                float* c = P.C + j + h;
                float* out = n == vec ? c : tile;
                const int64_t ldo = n == vec ? P.ldc : vec;
                for (int64_t pc = 0; pc < K; pc += bl.kc) {
                    const int64_t kc = std::min<int64_t>(bl.kc, K - pc);
                    const int64_t off = qq * kc * nr + h;
                    const float beta = pc == 0 ? (n == vec ? P.beta : 0.0f) : 1.0f;
                    if (P.A2)
                        ks.bf16pairs.rows(M, kc, P.A2 + pc / 2, P.lda2, P.packed->block16(jc, pc) + off, nr, out, ldo,
                                          beta);
                    else if (P.packed->type() != WeightType::f32)
                        ks.half[static_cast<int>(P.packed->half_format())].tall(
                            M, kc, P.A + pc, P.lda, P.packed->block16(jc, pc) + off, nr, out, ldo, beta);
                    else
                        ks.tall(M, kc, P.A + pc, P.lda, P.packed->block(jc, pc) + off, nr, out, ldo, beta);
                }
                if (n != vec) store_range(tile, static_cast<int>(vec), M, 0, n, c, P.ldc, P.beta, nullptr);
                apply_epilogue(ks, P.ep, c, P.ldc, M, n, j + h);
            }
        }
    }
}

// Whether P goes to the small-M or the tall path (dispatch), where B streams once through a rows kernel.
bool rows_path(const KernelSet& ks, const Problem& P) {
    return P.M <= kSmallM || (P.packed && P.M > ks.blocking.mr && P.M <= ks.tall_rows) ||
           (P.packed && P.packed->type() != WeightType::f32 && P.M <= small_m_packed());
}

void dispatch(const KernelSet& ks, const Problem& P, int nt) {
    if (P.M <= kSmallM) return run_small_m(ks, P, nt);
    if (P.packed && P.M > ks.blocking.mr && P.M <= ks.tall_rows) return run_tall(ks, P, nt);
    if (P.packed && P.packed->type() != WeightType::f32 && P.M <= small_m_packed()) return run_small_m(ks, P, nt);
    run_blocked(ks, P, nt);
}

void run(const KernelSet& ks, const Problem& P, int nthreads) {
    if (P.M <= 0 || P.N <= 0) return;
    if (P.K <= 0) {
        // Empty sum: C = beta C (+ epilogue). Callers refuse K == 0 at the boundary; kept total anyway.
        for (int64_t i = 0; i < P.M; ++i) {
            float* c = P.C + i * P.ldc;
            for (int64_t j = 0; j < P.N; ++j) c[j] = P.beta == 0.0f ? 0.0f : P.beta * c[j];
            apply_epilogue(ks, P.ep, c, P.ldc, 1, P.N, 0);
        }
        return;
    }
    const double flops = 2.0 * P.M * P.N * P.K;
    int nt = nthreads > 0 ? nthreads : cpu::threads_for(flops);
    if (omp_in_parallel()) nt = 1;
    if (P.packed && P.packed->type() == WeightType::bf16) {
        // bfloat16 weights multiply bfloat16 activations (what AMX and AVX512_BF16 compute, and so every kernel set
        // here): A rounded as the pair kernels pack it, else a rounded copy. (O(M K) next to the O(M N K) product.)
        const bool rows = rows_path(ks, P);
        if (!rows && ks.bf16pairs.micro) return run_blocked_bf16(ks, P, nt);
        Problem R = P;
        if (rows && pair_rows(ks)) {
            R.lda2 = (P.K + 1) / 2;
            uint32_t* a2 =
                reinterpret_cast<uint32_t*>(scratch<Slot::gemm_pairs_a>(static_cast<std::size_t>(P.M * R.lda2)));
            pack_pairs(ks, P.A, P.lda, P.M, P.K, a2, R.lda2, 1,
                       scratch<Slot::gemm_rounded_a>(static_cast<std::size_t>(P.K)));
            R.A2 = a2;
        } else {
            float* a = scratch<Slot::gemm_rounded_a>(static_cast<std::size_t>(P.M * P.K));
            for (int64_t i = 0; i < P.M; ++i) ks.round_bf16(P.A + i * P.lda, a + i * P.K, P.K);
            R.A = a;
            R.lda = P.K;
        }
        return dispatch(ks, R, nt);
    }
    dispatch(ks, P, nt);
}

}  // namespace

namespace {
std::atomic<int64_t> g_small_m_packed{64};
}

int64_t small_m_packed() { return g_small_m_packed.load(std::memory_order_relaxed); }
int64_t epilogue_cols() { return g_epilogue_cols.load(std::memory_order_relaxed); }
void set_epilogue_cols(int64_t n) { g_epilogue_cols.store(std::max<int64_t>(n, 1), std::memory_order_relaxed); }
void set_small_m_packed(int64_t m) { g_small_m_packed.store(m, std::memory_order_relaxed); }

void sgemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, BRef B, float* C, int64_t ldc, float beta,
           const Epilogue& ep, int nthreads) {
    run(cpu::active(), Problem{M, N, K, A, lda, B, nullptr, C, ldc, beta, ep}, nthreads);
}

void sgemm(int64_t M, const float* A, int64_t lda, const PackedMatrix& B, float* C, int64_t ldc, float beta,
           const Epilogue& ep, int nthreads) {
    if (B.type() == WeightType::i8) return gemm_int8(M, A, lda, B, C, ldc, beta, ep, nthreads);
    if (info(B.type()).family == WeightFamily::block) return gemm_q4(M, A, lda, B, C, ldc, beta, ep, nthreads);
    run(B.kernels(), Problem{M, B.N(), B.K(), A, lda, BRef{nullptr, 0, false}, &B, C, ldc, beta, ep}, nthreads);
}

void sgemm_batched(int64_t batch, int64_t M, int64_t N, int64_t K, const float* A, const int64_t* a_off, int64_t lda,
                   BRef B, const int64_t* b_off, float* C, int64_t c_stride, int64_t ldc) {
    const KernelSet& ks = cpu::active();
    const double flops = 2.0 * M * N * K;
    const int nt = omp_in_parallel() ? 1 : cpu::threads_for(flops * batch);
    // One product per thread while each is small enough to fit a core's caches (~ 2 x 256^3 flops).
    const bool per_thread = nt > 1 && batch >= nt && flops < 4e7;
    if (per_thread) {
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
        for (int64_t i = 0; i < batch; ++i)
            run(ks,
                Problem{M, N, K, A + a_off[i], lda, BRef{B.data + b_off[i], B.ld, B.trans}, nullptr, C + i * c_stride,
                        ldc, 0.0f},
                1);
        return;
    }
    for (int64_t i = 0; i < batch; ++i)
        run(ks,
            Problem{M, N, K, A + a_off[i], lda, BRef{B.data + b_off[i], B.ld, B.trans}, nullptr, C + i * c_stride, ldc,
                    0.0f},
            nt);
}

}  // namespace pyattn::gemm

// gemm_cols: a column range of a small-M product, computed by the calling thread alone (gemm.h).
//
// A decoding step runs ~120 GEMVs of 10-40 us each at 2 threads; a fork and join per product costs a few us of
// that, and a barrier inside one (the shared quantization of A) a little more. Here every thread of the caller's
// team quantizes the few rows of A itself (576-1536 values: well under a microsecond) and computes only its columns,
// so the products of a step need no synchronisation but the caller's barriers between dependent steps.
#include <algorithm>

#include "cpu/buffer.h"
#include "gemm/block_store.h"
#include "gemm/gemm.h"
#include "gemm/packed_matrix.h"

namespace pyattn::gemm {
namespace {

// Walks the panels of width nr covering [col0, col1): call(q, out, ld, bias, m rows at i) computes panel q's m x nr
// tile (+ bias when given) into out. Whole panels inside the range go through store_panel, edge ones through the tile.
template <typename Call>
void for_panels(int64_t M, int mr, int nr, int64_t N, int64_t col0, int64_t col1, float* C, int64_t ldc, float beta,
                const float* bias, Call&& call) {
    alignas(64) float tile[16 * 64];  // >= mr x nr of every kernel set
    for (int64_t q = col0 / nr; q * nr < col1; ++q) {
        const int64_t j = q * nr, n = std::min<int64_t>(nr, N - j);
        const int64_t t0 = std::max<int64_t>(col0 - j, 0), t1 = std::min<int64_t>(col1 - j, n);
        for (int64_t i = 0; i < M; i += mr) {
            const int64_t m = std::min<int64_t>(mr, M - i);
            float* c = C + i * ldc + j;
            if (t0 == 0 && t1 == n) {
                store_panel([&](float* out, int64_t ld, const float* bb) { call(q, i, m, out, ld, bb); }, m, n, nr, c,
                            ldc, beta, bias ? bias + j : nullptr, tile);
            } else {
                call(q, i, m, tile, static_cast<int64_t>(nr), nullptr);
                store_range(tile, nr, m, t0, t1, c, ldc, beta, bias ? bias + j : nullptr);
            }
        }
    }
}

// Columns per panel of B's kernel.
int64_t panel_cols(const PackedMatrix& B) {
    const kernels::KernelSet& ks = B.kernels();
    if (B.type() == WeightType::i8) return ks.i8.nr;
    if (info(B.type()).family == WeightFamily::block) return kernels::kQ4Cols;
    return ks.blocking.nr;
}

}  // namespace

int64_t chunk_cols(const PackedMatrix& B, int64_t bytes) {
    const int64_t unit = panel_cols(B), panels = (B.N() + unit - 1) / unit;
    const int64_t panel_bytes =
        std::max<int64_t>(static_cast<int64_t>(B.size_bytes()) / std::max<int64_t>(panels, 1), 1);
    return std::max<int64_t>(bytes / panel_bytes, 1) * unit;
}

ColsInput cols_input(int64_t M, const float* A, int64_t lda, const PackedMatrix& B) {
    ColsInput in;
    in.M = M;
    in.A = A;
    in.lda = lda;
    if (M <= 0) return in;
    const kernels::KernelSet& ks = B.kernels();
    const int64_t K = B.K();
    if (B.type() == WeightType::i8 || info(B.type()).family == WeightFamily::block) {
        const bool i8 = B.type() == WeightType::i8, int8 = !i8 || ks.i8.int8_a();
        const int64_t nb = B.nblocks(), kp = nb * kernels::kQBlock, abytes = int8 ? 1 : 2;
        void* q = scratch<Slot::gemm_cols_a>(static_cast<std::size_t>(M * kp * abytes + 3) / 4);
        float* sa = scratch<Slot::gemm_cols_scales>(static_cast<std::size_t>(M * nb));
        int32_t* ta = reinterpret_cast<int32_t*>(scratch<Slot::gemm_cols_sums>(static_cast<std::size_t>(M * nb)));
        int64_t ld = lda;
        const float* a = i8 ? scaled_input(B, A, lda, M, ld) : A;
        quantize_rows(ks, int8, a, ld, M, K, q, sa, ta, B.half_sums());
        in.q = q;
        in.sa = sa;
        in.ta = ta;
        in.kp = kp;
    } else if (B.type() == WeightType::bf16 && pair_rows(ks)) {  // bfloat16 A (as gemm.cpp's run), as pairs
        in.lda2 = (K + 1) / 2;
        uint32_t* p =
            reinterpret_cast<uint32_t*>(scratch<Slot::gemm_cols_pairs>(static_cast<std::size_t>(M * in.lda2)));
        pack_pairs(ks, A, lda, M, K, p, in.lda2, 1, scratch<Slot::gemm_cols_a>(static_cast<std::size_t>(K)));
        in.a2 = p;
    } else if (B.type() == WeightType::bf16) {  // ... or a rounded copy
        float* a = scratch<Slot::gemm_cols_a>(static_cast<std::size_t>(M * K));
        for (int64_t i = 0; i < M; ++i) ks.round_bf16(A + i * lda, a + i * K, K);
        in.A = a;
        in.lda = K;
    }
    return in;
}

void gemm_cols(const ColsInput& in, const PackedMatrix& B, float* C, int64_t ldc, float beta, const Epilogue& ep,
               int64_t col0, int64_t col1) {
    const int64_t N = B.N(), K = B.K(), M = in.M;
    col0 = std::max<int64_t>(col0, 0);
    col1 = std::min(col1, N);
    if (M <= 0 || col1 <= col0) return;
    const kernels::KernelSet& ks = B.kernels();
    const int64_t nb = B.nblocks(), kp = in.kp;
    if (B.type() == WeightType::i8) {
        const int64_t abytes = ks.i8.int8_a() ? 1 : 2;
        const char* q = static_cast<const char*>(in.q);
        const kernels::Int8Kernel tile = ks.i8.kernel_for(M);  // (tall: one pass over each panel for all rows)
        for_panels(M, ks.i8.mr_for(M), ks.i8.nr, N, col0, col1, C, ldc, beta, ep.bias,
                   [&](int64_t pq, int64_t i, int64_t m, float* out, int64_t ld, const float* bb) {
                       tile(m, nb, q + i * kp * abytes, kp, in.sa + i * nb, in.ta + i * nb, nb, B.panel_i8(pq),
                            B.panel_scales(pq), out, ld, bb, i == 0 ? kernels::stream_prefetch_bytes : 0);
                   });
    } else if (info(B.type()).family == WeightFamily::block) {
        const kernels::Q4Kernel kernel = ks.q4.tile[B.q4_kind()];
        const int8_t* q8 = static_cast<const int8_t*>(in.q);
        for_panels(M, ks.q4.mr, kernels::kQ4Cols, N, col0, col1, C, ldc, beta, ep.bias,
                   [&](int64_t pq, int64_t i, int64_t m, float* out, int64_t ld, const float* bb) {
                       kernel(m, nb, q8 + i * kp, kp, in.sa + i * nb, in.ta + i * nb, nb, B.panel_q4(pq), out, ld, bb,
                              i == 0 ? kernels::stream_prefetch_bytes : 0);
                   });
    } else {
        const auto bl = ks.blocking;
        const int nr = bl.nr;
        // As run_small_m (gemm.cpp) for the panels covering the range: B's blocks read in place by the rows kernel,
        // which takes beta itself; whole panels are written in place, edge ones through the tile.
        alignas(64) float tile[16 * 64];
        for (int64_t q = col0 / nr; q * nr < col1; ++q) {
            const int64_t j = q * nr, n = std::min<int64_t>(nr, N - j);
            const int64_t t0 = std::max<int64_t>(col0 - j, 0), t1 = std::min<int64_t>(col1 - j, n);
            const bool whole = t0 == 0 && t1 == nr;
            const int64_t jc = j / bl.nc * bl.nc, qq = (j - jc) / nr;
            for (int64_t i = 0; i < M; i += bl.mr) {
                const int64_t m = std::min<int64_t>(bl.mr, M - i);
                float* c = C + i * ldc + j;
                float* out = whole ? c : tile;
                const int64_t ldo = whole ? ldc : nr;
                for (int64_t pc = 0; pc < K; pc += bl.kc) {
                    const int64_t kc = std::min<int64_t>(bl.kc, K - pc), off = qq * kc * nr;
                    const float b = pc > 0 ? 1.0f : whole ? beta : 0.0f;
                    const float* a = in.A + i * in.lda + pc;
                    if (in.a2)
                        ks.bf16pairs.rows(m, kc, in.a2 + i * in.lda2 + pc / 2, in.lda2, B.block16(jc, pc) + off, nr,
                                          out, ldo, b);
                    else if (B.type() != WeightType::f32)
                        ks.half[static_cast<int>(B.half_format())].rows(m, kc, a, in.lda, B.block16(jc, pc) + off, nr,
                                                                        out, ldo, b);
                    else
                        ks.rows(m, kc, a, in.lda, B.block(jc, pc) + off, nr, out, ldo, b);
                }
                if (!whole) store_range(tile, nr, m, t0, t1, c, ldc, beta, nullptr);
            }
        }
        if (ep.bias || ep.act != kernels::Activation::none)
            for (int64_t i = 0; i < M; ++i)
                ks.bias_act(C + i * ldc + col0, C + i * ldc + col0, ep.bias ? ep.bias + col0 : nullptr, col1 - col0,
                            ep.act);
        return;
    }
    if (ep.act != kernels::Activation::none)
        for (int64_t i = 0; i < M; ++i)
            ks.bias_act(C + i * ldc + col0, C + i * ldc + col0, nullptr, col1 - col0, ep.act);
}

}  // namespace pyattn::gemm

// Storing tiles and quantizing activations, shared by the GEMM drivers (gemm.cpp, gemm_int8.cpp, gemm_cols.cpp).
#pragma once
#include <cstdint>
#include <cstring>

#include "kernels/kernels.h"

namespace pyattn::gemm {

// Columns [t0, t1) of an m-row tile (row stride nr) to C (columns relative to the tile), beta C and the bias (or
// none) added one add each.
inline void store_range(const float* tile, int nr, int64_t m, int64_t t0, int64_t t1, float* c, int64_t ldc, float beta,
                        const float* bias) {
    for (int64_t r = 0; r < m; ++r)
        for (int64_t t = t0; t < t1; ++t) {
            float v = tile[r * nr + t];
            if (beta != 0.0f) v = v + beta * c[r * ldc + t];
            if (bias) v = v + bias[t];
            c[r * ldc + t] = v;
        }
}

// C rows [i, i + m) x panel columns [j, j + n) from a kernel that writes whole panels: directly when the panel is
// whole and beta is 0, else through `tile` (row stride nr), then beta C and the bias, each one add as in the kernel.
template <typename Call>
void store_panel(Call&& call, int64_t m, int64_t n, int nr, float* c, int64_t ldc, float beta, const float* bias,
                 float* tile) {
    if (n == nr && beta == 0.0f) return call(c, ldc, bias);
    call(tile, static_cast<int64_t>(nr), nullptr);
    store_range(tile, nr, m, 0, n, c, ldc, beta, bias);
}

// A pair of bfloat16 values (Bf16PairKernels, kernels.h) from two floats that hold bfloat16 values already: their
// high halves, lo's in the low half.
inline uint32_t bf16_pair(float lo, float hi) {
    uint32_t l, h;
    std::memcpy(&l, &lo, sizeof l);
    std::memcpy(&h, &hi, sizeof h);
    return (l >> 16) | (h & 0xffff0000u);
}

// m rows of k floats (row stride lda) rounded to bfloat16 and stored as pairs, row i's pair q at
// dst[i * ldd + q * step]; an odd k ends in (x, 0). The set's pack kernel where it takes the layout, else
// ks.round_bf16 a row at a time through tmp (k floats) and the pairs built one by one.
inline void pack_pairs(const kernels::KernelSet& ks, const float* a, int64_t lda, int64_t m, int64_t k, uint32_t* dst,
                       int64_t ldd, int64_t step, float* tmp) {
    if (ks.bf16pairs.pack && (step == 1 || (ldd == 1 && m <= 16)))
        return ks.bf16pairs.pack(a, lda, m, k, dst, ldd, step);
    for (int64_t i = 0; i < m; ++i) {
        ks.round_bf16(a + i * lda, tmp, k);
        uint32_t* d = dst + i * ldd;
        for (int64_t q = 0; q < k / 2; ++q) d[q * step] = bf16_pair(tmp[2 * q], tmp[2 * q + 1]);
        if (k & 1) d[(k / 2) * step] = bf16_pair(tmp[k - 1], 0.0f);
    }
}

// Whether the small-M and tall paths of bfloat16 weights run the pair rows kernel: the set has one for its panel width
// and row counts, and packed K blocks start on even k (their pairs are A's pairs).
inline bool pair_rows(const kernels::KernelSet& ks) {
    const auto& bl = ks.blocking;
    return ks.bf16pairs.rows && bl.kc % 2 == 0 && bl.nr == 32 && ks.tall_cols == 32 && ks.bf16pairs.rows_max >= bl.mr &&
           ks.bf16pairs.rows_max >= ks.tall_rows;
}

// The activations of an integer product quantized as its kernels read them (Int8Kernels in kernels.h): m rows of A
// (K floats, stride lda) into q, row stride kp = nblocks * kQBlock, as int8 with the blocks' integer sums ta (int8 is
// true: the 4-bit kernels and the int8 kernels whose kgroup is 4) or as int16 (ta unused); the block scales in sa.
// ta and sa have row stride nblocks. halves (int8 only; the 6-bit kernels, kernels.h): each block's ta is its two
// halves' sums instead, t_0 in the low 16 bits and t_1 in the high 16 (each at most 16 * 127 in size).
void quantize_rows(const kernels::KernelSet& ks, bool int8, const float* A, int64_t lda, int64_t m, int64_t K, void* q,
                   float* sa, int32_t* ta, bool halves = false);

}  // namespace pyattn::gemm

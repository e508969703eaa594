// Scalar 4-, 5- and 6-bit block kernels (Q4Kernels in kernels.h): the reference the vector sets must match bit for bit.
// Compiled with -ffp-contract=off: the only fused steps are the explicit fmaf.
#include "kernels/half.h"
#include "kernels/kernels.h"

namespace pyattn::kernels {

int64_t stream_prefetch_bytes = 4096;

namespace {

template <bool kMin, bool kFive>
void q4_tile(int64_t m, int64_t nb, const int8_t* a, int64_t lda, const float* sa, const int32_t* ta, int64_t ldsa,
             const uint8_t* b, float* c, int64_t ldc, const float* bias, int64_t) {
    constexpr int64_t bs = q4_block_bytes(kMin, kFive);
    for (int64_t i = 0; i < m; ++i)
        for (int j = 0; j < kQ4Cols; ++j) {
            float s = 0.0f;
            for (int64_t blk = 0; blk < nb; ++blk) {
                const uint8_t* nib = b + blk * bs;
                const int8_t* x = a + i * lda + blk * kQBlock;
                int32_t sum = 0;
                for (int k = 0; k < kQBlock; ++k) sum += block_value(nib, j, k, kFive ? 5 : 4) * x[k];
                const uint16_t* h = reinterpret_cast<const uint16_t*>(nib + q4_halves(kFive));
                const float d = half_to_float(h[j]), sab = sa[i * ldsa + blk];
                const int32_t t = ta[i * ldsa + blk];
                if (kMin) {
                    s = __builtin_fmaf(half_to_float(h[kQ4Cols + j]), sab * static_cast<float>(t), s);
                } else {
                    sum -= (kFive ? 16 : 8) * t;
                }
                s = __builtin_fmaf(static_cast<float>(sum), sab * d, s);
            }
            if (bias) s = s + bias[j];
            c[i * ldc + j] = s;
        }
}

// kernels.h's Q6_K formula: both halves' sums apart, then the int32 combination and one float step per block.
void q6_tile(int64_t m, int64_t nb, const int8_t* a, int64_t lda, const float* sa, const int32_t* ta, int64_t ldsa,
             const uint8_t* b, float* c, int64_t ldc, const float* bias, int64_t) {
    constexpr int64_t bs = q6_block_bytes();
    for (int64_t i = 0; i < m; ++i)
        for (int j = 0; j < kQ4Cols; ++j) {
            float s = 0.0f;
            for (int64_t blk = 0; blk < nb; ++blk) {
                const uint8_t* nib = b + blk * bs;
                const int8_t* x = a + i * lda + blk * kQBlock;
                int32_t sum[2] = {0, 0};
                for (int k = 0; k < kQBlock; ++k) sum[k / 16] += block_value(nib, j, k, 6) * x[k];
                const int32_t t[2] = {low16(ta[i * ldsa + blk]), high16(ta[i * ldsa + blk])};  // A's half sums
                const int8_t* sc = reinterpret_cast<const int8_t*>(nib + q6_scales(0));
                const int32_t v = sc[j] * (sum[0] - 32 * t[0]) + sc[kQ4Cols + j] * (sum[1] - 32 * t[1]);
                const float d = half_to_float(reinterpret_cast<const uint16_t*>(nib + q6_halves())[j]);
                s = __builtin_fmaf(static_cast<float>(v), sa[i * ldsa + blk] * d, s);
            }
            if (bias) s = s + bias[j];
            c[i * ldc + j] = s;
        }
}

// The super-block kernels' loops: c[i][j] = the float steps of every block (step(sup, q, x, i, j, blk, s): block q of
// super-block sup (ss bytes) for row i, column j, A's values x of the block, returning s after it), then the bias.
template <class Step>
void super_tile(int64_t m, int64_t nb, int64_t ss, const int8_t* a, int64_t lda, const uint8_t* b, float* c,
                int64_t ldc, const float* bias, Step step) {
    for (int64_t i = 0; i < m; ++i)
        for (int j = 0; j < kQ4Cols; ++j) {
            float s = 0.0f;
            for (int64_t blk = 0; blk < nb; ++blk)
                s = step(b + blk / kQKSuper * ss, static_cast<int>(blk % kQKSuper), a + i * lda + blk * kQBlock, i, j,
                         blk, s);
            if (bias) s = s + bias[j];
            c[i * ldc + j] = s;
        }
}

// kernels.h's K-quant step: Q4_1's with the block's exact ds = d sc and dm = dmin m.
template <bool kFive>
void qk_tile(int64_t m, int64_t nb, const int8_t* a, int64_t lda, const float* sa, const int32_t* ta, int64_t ldsa,
             const uint8_t* b, float* c, int64_t ldc, const float* bias, int64_t) {
    super_tile(m, nb, q4k_super_bytes(kFive), a, lda, b, c, ldc, bias,
               [&](const uint8_t* sup, int q, const int8_t* x, int64_t i, int j, int64_t blk, float s) {
                   int32_t sum = 0;
                   for (int k = 0; k < kQBlock; ++k)
                       sum += block_value(sup + q4k_values(kFive, q), j, k, kFive ? 5 : 4) * x[k];
                   const uint16_t* h = reinterpret_cast<const uint16_t*>(sup + q4k_halves(kFive));
                   const uint8_t* sc = sup + q4k_scales(kFive, q);
                   const float ds = half_to_float(h[j]) * static_cast<float>(sc[j]);
                   const float dm = half_to_float(h[kQ4Cols + j]) * static_cast<float>(sc[kQ4Cols + j]);
                   const float sab = sa[i * ldsa + blk];
                   s = __builtin_fmaf(-dm, sab * static_cast<float>(ta[i * ldsa + blk]), s);
                   return __builtin_fmaf(static_cast<float>(sum), sab * ds, s);
               });
}

// kernels.h's Q2_K / Q3_K steps.
template <bool kThree>
void q2k_tile(int64_t m, int64_t nb, const int8_t* a, int64_t lda, const float* sa, const int32_t* ta, int64_t ldsa,
              const uint8_t* b, float* c, int64_t ldc, const float* bias, int64_t) {
    super_tile(m, nb, q2k_super_bytes(kThree), a, lda, b, c, ldc, bias,
               [&](const uint8_t* sup, int q, const int8_t* x, int64_t i, int j, int64_t blk, float s) {
                   int32_t sum[2] = {0, 0};
                   for (int k = 0; k < kQBlock; ++k)
                       sum[k / 16] += low_value(sup + q2k_values(kThree, q), j, k, kThree ? 3 : 2) * x[k];
                   const int32_t t[2] = {low16(ta[i * ldsa + blk]), high16(ta[i * ldsa + blk])};  // A's half sums
                   const uint8_t* sc = sup + q2k_scales(kThree, q);
                   const uint16_t* h = reinterpret_cast<const uint16_t*>(sup + q2k_halves(kThree));
                   const float sab = sa[i * ldsa + blk];
                   int32_t v;
                   if (kThree) {
                       v = static_cast<int8_t>(sc[j]) * (sum[0] - 4 * t[0]) +
                           static_cast<int8_t>(sc[kQ4Cols + j]) * (sum[1] - 4 * t[1]);
                   } else {
                       v = (sc[j] & 15) * sum[0] + (sc[kQ4Cols + j] & 15) * sum[1];
                       const int32_t w = (sc[j] >> 4) * t[0] + (sc[kQ4Cols + j] >> 4) * t[1];
                       s = __builtin_fmaf(-static_cast<float>(w), sab * half_to_float(h[kQ4Cols + j]), s);
                   }
                   return __builtin_fmaf(static_cast<float>(v), sab * half_to_float(h[j]), s);
               });
}

}  // namespace

Q4Kernels scalar_q4_kernels() {
    return Q4Kernels{4,
                     {&q4_tile<false, false>, &q4_tile<true, false>, &q4_tile<false, true>, &q4_tile<true, true>,
                      &q6_tile, &qk_tile<false>, &qk_tile<true>, &q2k_tile<false>, &q2k_tile<true>}};
}

}  // namespace pyattn::kernels

// AVX2 4-bit block kernels (Q4Kernels in kernels.h; compiled with -mavx2 -mfma -mf16c -ffp-contract=off).
// Per block and 8-column panel: four 32-byte loads of nibbles, each split into low and high halves (and, shift, and),
// then per row of A two pmaddubsw (unsigned nibbles x signed activations, A's 4 bytes broadcast) summed in int16
// lanes, one pmaddwd by ones to int32 per column, and the block's float step. 32 multiply-adds per pmaddubsw where
// the int8 kernels' pmaddwd does 16: this is the type for decoding, where the weights' bytes are the limit (0.56
// bytes per weight for Q4_0, 0.625 for Q4_1, against 1.125 for int8).
#include <immintrin.h>

#include <cstring>

#include "kernels/kernels.h"

namespace pyattn::kernels {
namespace {

inline __m256i bcast4(const int8_t* p) {
    int32_t v;
    std::memcpy(&v, p, sizeof v);
    return _mm256_set1_epi32(v);
}

template <int M, bool kMin>
void q4_tile_m(int64_t nb, const int8_t* a, int64_t lda, const float* sa, const int32_t* ta, int64_t ldsa,
               const uint8_t* b, float* c, int64_t ldc, const float* bias, int64_t ahead) {
    constexpr int64_t bs = q4_block_bytes(kMin);
    const __m256i low = _mm256_set1_epi8(15), ones = _mm256_set1_epi16(1);
    __m256 sum[M];
#pragma GCC unroll 8
    for (int i = 0; i < M; ++i) sum[i] = _mm256_setzero_ps();
    for (int64_t blk = 0; blk < nb; ++blk) {
        const uint8_t* nib = b + blk * bs;
        const int8_t* x = a + blk * kQBlock;
        if (ahead > 0) {  // the block's bytes ahead; past the panel's end they are the next panel's (contiguous)
            _mm_prefetch(reinterpret_cast<const char*>(nib + ahead), _MM_HINT_T0);
            _mm_prefetch(reinterpret_cast<const char*>(nib + ahead + 64), _MM_HINT_T0);
            if constexpr (bs > 128) _mm_prefetch(reinterpret_cast<const char*>(nib + ahead + 128), _MM_HINT_T0);
        }
        __m256i acc[M];
#pragma GCC unroll 8
        for (int i = 0; i < M; ++i) acc[i] = _mm256_setzero_si256();
#pragma GCC unroll 4
        for (int ch = 0; ch < 4; ++ch) {
            const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(nib + 32 * ch));
            const __m256i lo = _mm256_and_si256(v, low), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
#pragma GCC unroll 8
            for (int i = 0; i < M; ++i) {
                const __m256i p0 = _mm256_maddubs_epi16(lo, bcast4(x + i * lda + 4 * ch));
                const __m256i p1 = _mm256_maddubs_epi16(hi, bcast4(x + i * lda + 16 + 4 * ch));
                acc[i] = _mm256_add_epi16(acc[i], _mm256_add_epi16(p0, p1));
                // Keeps each row's products summed as they come: left free, GCC computed the 32 products of a block
                // first and spilled them (53 stack accesses in the M = 4 loop).
                asm("" : "+x"(acc[i]));
            }
        }
        const __m128i* h = reinterpret_cast<const __m128i*>(nib + 16 * kQ4Cols);
        const __m256 d = _mm256_cvtph_ps(_mm_loadu_si128(h));
        __m256 mn;
        if constexpr (kMin) mn = _mm256_cvtph_ps(_mm_loadu_si128(h + 1));
#pragma GCC unroll 8
        for (int i = 0; i < M; ++i) {
            __m256i s32 = _mm256_madd_epi16(acc[i], ones);
            const float sab = sa[i * ldsa + blk];
            const int32_t t = ta[i * ldsa + blk];
            if constexpr (kMin) {
                sum[i] = _mm256_fmadd_ps(mn, _mm256_set1_ps(sab * static_cast<float>(t)), sum[i]);
            } else {
                s32 = _mm256_sub_epi32(s32, _mm256_set1_epi32(8 * t));
            }
            sum[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s32), _mm256_mul_ps(_mm256_set1_ps(sab), d), sum[i]);
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < M; ++i) {
        __m256 v = sum[i];
        if (bias) v = _mm256_add_ps(v, _mm256_loadu_ps(bias));
        _mm256_storeu_ps(c + i * ldc, v);
    }
}

template <bool kMin, int M = 4>
void q4_tile(int64_t m, int64_t nb, const int8_t* a, int64_t lda, const float* sa, const int32_t* ta, int64_t ldsa,
             const uint8_t* b, float* c, int64_t ldc, const float* bias, int64_t ahead) {
    if constexpr (M >= 1) {
        if (m == M) return q4_tile_m<M, kMin>(nb, a, lda, sa, ta, ldsa, b, c, ldc, bias, ahead);
        return q4_tile<kMin, M - 1>(m, nb, a, lda, sa, ta, ldsa, b, c, ldc, bias, ahead);
    }
}

}  // namespace

Q4Kernels avx2_q4_kernels() { return Q4Kernels{4, {&q4_tile<false>, &q4_tile<true>}}; }

}  // namespace pyattn::kernels

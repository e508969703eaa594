// AVX2 4- and 5-bit block kernels (Q4Kernels in kernels.h; compiled with -mavx2 -mfma -mf16c -ffp-contract=off).
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

#include "kernels/x86_fields.inl"

inline __m256i bcast4(const int8_t* p) {
    int32_t v;
    std::memcpy(&v, p, sizeof v);
    return _mm256_set1_epi32(v);
}

// One block's sums: per 32-byte chunk, the low and high nibbles (with their fifth bits, 5-bit) times A's four bytes
// (pmaddubsw), added in int16 lanes, then pmaddwd by ones to int32. 5-bit values reach 31: 16 * 31 * 127 would
// overflow an int16 lane over a block, so each chunk's pair (at most 4 * 31 * 127 = 15748) goes to int32 at once.
struct Q4SumsAvx2 {
    static constexpr int kMR = 4;
    template <int M, bool kFive>
    static void sums(const uint8_t* nib, const int8_t* x, int64_t lda, __m256i (&s32)[M]) {
        const __m256i ones = _mm256_set1_epi16(1);
        const __m256i fifth = kFive ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(nib + q4_fifth_bits()))
                                    : _mm256_setzero_si256();
        __m256i acc[M];
#pragma GCC unroll 8
        for (int i = 0; i < M; ++i) acc[i] = _mm256_setzero_si256();
#pragma GCC unroll 4
        for (int ch = 0; ch < 4; ++ch) {
            __m256i lo, hi;
            five_bit_values<kFive>(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(nib + 32 * ch)), fifth, ch, lo,
                                   hi);
#pragma GCC unroll 8
            for (int i = 0; i < M; ++i) {
                const __m256i p0 = _mm256_maddubs_epi16(lo, bcast4(x + i * lda + 4 * ch));
                const __m256i p1 = _mm256_maddubs_epi16(hi, bcast4(x + i * lda + 16 + 4 * ch));
                if constexpr (kFive)
                    acc[i] = _mm256_add_epi32(acc[i], _mm256_madd_epi16(_mm256_add_epi16(p0, p1), ones));
                else
                    acc[i] = _mm256_add_epi16(acc[i], _mm256_add_epi16(p0, p1));
                // Keeps each row's products summed as they come: left free, GCC computed the 32 products of a block
                // first and spilled them (53 stack accesses in the M = 4 loop).
                asm("" : "+x"(acc[i]));
            }
        }
#pragma GCC unroll 8
        for (int i = 0; i < M; ++i) s32[i] = kFive ? acc[i] : _mm256_madd_epi16(acc[i], ones);
    }

    // The 6-bit block's halves apart (k < 16 from the low nibbles, k >= 16 from the high ones; the top two bits ORed
    // over them, x86_fields.inl), each chunk's pmaddubsw (at most 2 * 63 * 127 per int16 lane) to int32 at once.
    template <int M>
    static void sums6(const uint8_t* nib, const int8_t* x, int64_t lda, __m256i (&s0)[M], __m256i (&s1)[M]) {
        const __m256i ones = _mm256_set1_epi16(1);
#pragma GCC unroll 8
        for (int i = 0; i < M; ++i) s0[i] = s1[i] = _mm256_setzero_si256();
#pragma GCC unroll 4
        for (int ch = 0; ch < 4; ++ch) {
            const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(nib + 32 * ch));
            __m256i lo, hi;
            six_bit_values(v, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(nib + q6_high_bits(ch))), ch, lo, hi);
#pragma GCC unroll 8
            for (int i = 0; i < M; ++i) {
                s0[i] = _mm256_add_epi32(
                    s0[i], _mm256_madd_epi16(_mm256_maddubs_epi16(lo, bcast4(x + i * lda + 4 * ch)), ones));
                s1[i] = _mm256_add_epi32(
                    s1[i], _mm256_madd_epi16(_mm256_maddubs_epi16(hi, bcast4(x + i * lda + 16 + 4 * ch)), ones));
            }
        }
    }

    // A low-bit block's halves apart (kernels.h): each field's values (at most 7) by pmaddubsw, the half's four
    // fields added in int16 lanes (at most 4 * 2 * 7 * 127 = 7112), then pmaddwd by ones.
    template <int M, bool kThree>
    static void sums2(const uint8_t* v, const int8_t* x, int64_t lda, __m256i (&s0)[M], __m256i (&s1)[M]) {
        const __m256i ones = _mm256_set1_epi16(1);
        const __m256i third = kThree ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(v + q2k_third_bits()))
                                     : _mm256_setzero_si256();
#pragma GCC unroll 2
        for (int h = 0; h < 2; ++h) {
            const __m256i all = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(v + 32 * h));
            __m256i acc[M];
#pragma GCC unroll 8
            for (int i = 0; i < M; ++i) acc[i] = _mm256_setzero_si256();
#pragma GCC unroll 4
            for (int f = 0; f < 4; ++f) {
                const __m256i u = low_bit_values<kThree>(all, third, h, f);
#pragma GCC unroll 8
                for (int i = 0; i < M; ++i)
                    acc[i] = _mm256_add_epi16(acc[i], _mm256_maddubs_epi16(u, bcast4(x + i * lda + 16 * h + 4 * f)));
            }
#pragma GCC unroll 8
            for (int i = 0; i < M; ++i) (h ? s1 : s0)[i] = _mm256_madd_epi16(acc[i], ones);
        }
    }
};

#include "kernels/q4_kernels.inl"

}  // namespace

Q4Kernels avx2_q4_kernels() { return make_q4_kernels<Q4SumsAvx2>(); }

}  // namespace pyattn::kernels

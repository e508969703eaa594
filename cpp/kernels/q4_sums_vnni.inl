// The block sums on vpdpbusd (q4_kernels.inl's policy S), for the sets that have it: up to kRows rows per call
// (avx512_vnni: 6, whose 32 registers hold 6 rows' chains of int32 sums, their float sums and the panel's chunk;
// avx_vnni: 4, in 16). Included inside the anonymous namespace of a unit that has x86_fields.inl and defines
// dpbusd256(acc, u, a) (vpdpbusd on 256-bit registers: acc + the four products of u's unsigned and a's signed bytes
// per int32 lane), before q4_kernels.inl.
//
// The 4-bit blocks (Q4Kernels in kernels.h) on vpdpbusd: a panel's nibbles are unsigned already and its byte
// 32 c + 4 j + s holds k = 4 c + s (low nibble) and 16 + 4 c + s (high) of column j, so each int32 lane of a 256-bit
// load, masked or shifted, is four consecutive k of one column: one vpdpbusd per half-chunk and row, against A's four
// int8 broadcast, sums them exactly in int32 (where the AVX2 kernel needs pmaddubsw, an int16 add and pmaddwd by
// ones). The tile around it, its float steps included, is q4_kernels.inl, shared with the AVX2 set: the same bits.
template <int kRows>
struct Q4SumsVnni {
    static constexpr int kMR = kRows;
    template <int M, bool kFive>
    static void sums(const uint8_t* nib, const int8_t* x, int64_t lda, __m256i (&s32)[M]) {
        // C independent chains of sums per row, added at the end (vpdpbusd waits for its sum, several cycles).
        // Measured through heavy noise only: SmolLM2 decode at 2 threads was 0.43x and 0.46x llama.cpp's in two
        // bench_llm runs with these chains, 0.51x in one run with one chain per row; GEMVs alone could not tell them
        // apart.
        constexpr int C = M == 1 ? 4 : 2;
        const __m256i fifth = kFive ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(nib + q4_fifth_bits()))
                                    : _mm256_setzero_si256();
        __m256i acc[M][C];
#pragma GCC unroll 8
        for (int i = 0; i < M; ++i)
#pragma GCC unroll 4
            for (int q = 0; q < C; ++q) acc[i][q] = _mm256_setzero_si256();
#pragma GCC unroll 4
        for (int ch = 0; ch < 4; ++ch) {
            __m256i lo, hi;  // (5-bit: the fifth bits, kernels.h, ORed over the nibbles)
            five_bit_values<kFive>(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(nib + 32 * ch)), fifth, ch, lo,
                                   hi);
#pragma GCC unroll 8
            for (int i = 0; i < M; ++i) {
                __m256i& a0 = acc[i][(2 * ch) % C];
                __m256i& a1 = acc[i][(2 * ch + 1) % C];
                int32_t x0, x1;
                __builtin_memcpy(&x0, x + i * lda + 4 * ch, sizeof x0);
                __builtin_memcpy(&x1, x + i * lda + 16 + 4 * ch, sizeof x1);
                a0 = dpbusd256(a0, lo, _mm256_set1_epi32(x0));
                a1 = dpbusd256(a1, hi, _mm256_set1_epi32(x1));
            }
        }
#pragma GCC unroll 8
        for (int i = 0; i < M; ++i) {
            s32[i] = acc[i][0];
#pragma GCC unroll 4
            for (int q = 1; q < C; ++q) s32[i] = _mm256_add_epi32(s32[i], acc[i][q]);
        }
    }

    // A low-bit block's halves apart (kernels.h): per half one 32-byte load, each field f shifted down and masked to
    // 8 columns x 4 k (3-bit: the third bits ORed over them).
    template <int M, bool kThree>
    static void sums2(const uint8_t* v, const int8_t* x, int64_t lda, __m256i (&s0)[M], __m256i (&s1)[M]) {
        const __m256i third = kThree ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(v + q2k_third_bits()))
                                     : _mm256_setzero_si256();
#pragma GCC unroll 8
        for (int i = 0; i < M; ++i) s0[i] = s1[i] = _mm256_setzero_si256();
#pragma GCC unroll 2
        for (int h = 0; h < 2; ++h) {
            const __m256i all = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(v + 32 * h));
#pragma GCC unroll 4
            for (int f = 0; f < 4; ++f) {
                const __m256i u = low_bit_values<kThree>(all, third, h, f);
#pragma GCC unroll 8
                for (int i = 0; i < M; ++i) {
                    int32_t xq;
                    __builtin_memcpy(&xq, x + i * lda + 16 * h + 4 * f, sizeof xq);
                    __m256i& acc = h ? s1[i] : s0[i];
                    acc = dpbusd256(acc, u, _mm256_set1_epi32(xq));
                }
            }
        }
    }

    // The 6-bit block's halves apart: each chunk's top two bits ORed over its nibbles (x86_fields.inl).
    template <int M>
    static void sums6(const uint8_t* nib, const int8_t* x, int64_t lda, __m256i (&s0)[M], __m256i (&s1)[M]) {
#pragma GCC unroll 8
        for (int i = 0; i < M; ++i) s0[i] = s1[i] = _mm256_setzero_si256();
#pragma GCC unroll 4
        for (int ch = 0; ch < 4; ++ch) {
            const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(nib + 32 * ch));
            __m256i lo, hi;
            six_bit_values(v, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(nib + q6_high_bits(ch))), ch, lo, hi);
#pragma GCC unroll 8
            for (int i = 0; i < M; ++i) {
                int32_t x0, x1;
                __builtin_memcpy(&x0, x + i * lda + 4 * ch, sizeof x0);
                __builtin_memcpy(&x1, x + i * lda + 16 + 4 * ch, sizeof x1);
                s0[i] = dpbusd256(s0[i], lo, _mm256_set1_epi32(x0));
                s1[i] = dpbusd256(s1[i], hi, _mm256_set1_epi32(x1));
            }
        }
    }
};

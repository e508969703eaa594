// 4-, 5- and 6-bit block kernels and the K-quant super-blocks' (Q4Kernels in kernels.h) written once against a policy S
// that sums one block, and instantiated by avx2/q4_avx2.cpp (pmaddubsw) and avx512/int8_vnni.cpp (vpdpbusd). Included
// inside an anonymous namespace of those units, after S is defined; both are compiled with -ffp-contract=off, so the
// float steps below are the same operations in the same order in each: the same bits (tested against the scalar set and
// numpy).
//
// S::sums<M, kFive>(nib, x, lda, s32): for M rows of A (int8, the block's kQBlock values at x + i lda) and the 8
// columns of a block's nibbles (nib, kernels.h's layout; kFive: with the fifth bits after them), s32[i] = the exact
// int32 sums sum_k Aq[i][k] u[k][j], one lane a column. S::kMR: the most rows per call.

// A tile's M x 8 sums (+ bias) into C.
template <int M>
inline void store_tile(const __m256 (&sum)[M], float* c, int64_t ldc, const float* bias) {
#pragma GCC unroll 8
    for (int i = 0; i < M; ++i) {
        __m256 v = sum[i];
        if (bias) v = _mm256_add_ps(v, _mm256_loadu_ps(bias));
        _mm256_storeu_ps(c + i * ldc, v);
    }
}

template <class S, int M, bool kMin, bool kFive>
void q4_tile_m(int64_t nb, const int8_t* a, int64_t lda, const float* sa, const int32_t* ta, int64_t ldsa,
               const uint8_t* b, float* c, int64_t ldc, const float* bias, int64_t ahead) {
    constexpr int64_t bs = q4_block_bytes(kMin, kFive);
    constexpr int32_t kOffset = kFive ? 16 : 8;  // of Q4_0 / Q5_0
    __m256 sum[M];
#pragma GCC unroll 8
    for (int i = 0; i < M; ++i) sum[i] = _mm256_setzero_ps();
    for (int64_t blk = 0; blk < nb; ++blk) {
        const uint8_t* nib = b + blk * bs;
        if (ahead > 0) {  // the block's bytes ahead; past the panel's end they are the next panel's (contiguous)
            _mm_prefetch(reinterpret_cast<const char*>(nib + ahead), _MM_HINT_T0);
            _mm_prefetch(reinterpret_cast<const char*>(nib + ahead + 64), _MM_HINT_T0);
            if constexpr (bs > 128) _mm_prefetch(reinterpret_cast<const char*>(nib + ahead + 128), _MM_HINT_T0);
        }
        __m256i s32[M];
        S::template sums<M, kFive>(nib, a + blk * kQBlock, lda, s32);
        const __m128i* h = reinterpret_cast<const __m128i*>(nib + q4_halves(kFive));
        const __m256 d = _mm256_cvtph_ps(_mm_loadu_si128(h));
        __m256 mn;
        if constexpr (kMin) mn = _mm256_cvtph_ps(_mm_loadu_si128(h + 1));
#pragma GCC unroll 8
        for (int i = 0; i < M; ++i) {
            const float sab = sa[i * ldsa + blk];
            const int32_t t = ta[i * ldsa + blk];
            if constexpr (kMin) {
                sum[i] = _mm256_fmadd_ps(mn, _mm256_set1_ps(sab * static_cast<float>(t)), sum[i]);
            } else {
                s32[i] = _mm256_sub_epi32(s32[i], _mm256_set1_epi32(kOffset * t));
            }
            sum[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s32[i]), _mm256_mul_ps(_mm256_set1_ps(sab), d), sum[i]);
        }
    }
    store_tile<M>(sum, c, ldc, bias);
}

template <class S, bool kMin, bool kFive, int M = S::kMR>
void q4_tile(int64_t m, int64_t nb, const int8_t* a, int64_t lda, const float* sa, const int32_t* ta, int64_t ldsa,
             const uint8_t* b, float* c, int64_t ldc, const float* bias, int64_t ahead) {
    if constexpr (M >= 1) {
        if (m == M) return q4_tile_m<S, M, kMin, kFive>(nb, a, lda, sa, ta, ldsa, b, c, ldc, bias, ahead);
        return q4_tile<S, kMin, kFive, M - 1>(m, nb, a, lda, sa, ta, ldsa, b, c, ldc, bias, ahead);
    }
}

// S::sums6<M>(nib, x, lda, s0, s1): the 6-bit block's sums I_0 (k < 16) and I_1 (k >= 16), one lane a column.
template <class S, int M>
void q6_tile_m(int64_t nb, const int8_t* a, int64_t lda, const float* sa, const int32_t* ta, int64_t ldsa,
               const uint8_t* b, float* c, int64_t ldc, const float* bias, int64_t ahead) {
    constexpr int64_t bs = q6_block_bytes();
    __m256 sum[M];
#pragma GCC unroll 8
    for (int i = 0; i < M; ++i) sum[i] = _mm256_setzero_ps();
    for (int64_t blk = 0; blk < nb; ++blk) {
        const uint8_t* nib = b + blk * bs;
        if (ahead > 0)
            for (int64_t line = 0; line < bs; line += 64)
                _mm_prefetch(reinterpret_cast<const char*>(nib + ahead + line), _MM_HINT_T0);
        __m256i s0[M], s1[M];
        S::template sums6<M>(nib, a + blk * kQBlock, lda, s0, s1);
        const __m256 d = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(nib + q6_halves())));
        const __m256i sc0 = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(nib + q6_scales(0))));
        const __m256i sc1 = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(nib + q6_scales(1))));
#pragma GCC unroll 8
        for (int i = 0; i < M; ++i) {
            const int32_t t = ta[i * ldsa + blk];  // the halves' sums, packed (kernels.h)
            const __m256i v =
                _mm256_add_epi32(_mm256_mullo_epi32(sc0, _mm256_sub_epi32(s0[i], _mm256_set1_epi32(32 * low16(t)))),
                                 _mm256_mullo_epi32(sc1, _mm256_sub_epi32(s1[i], _mm256_set1_epi32(32 * high16(t)))));
            sum[i] =
                _mm256_fmadd_ps(_mm256_cvtepi32_ps(v), _mm256_mul_ps(_mm256_set1_ps(sa[i * ldsa + blk]), d), sum[i]);
        }
    }
    store_tile<M>(sum, c, ldc, bias);
}

template <class S, int M = S::kMR>
void q6_tile(int64_t m, int64_t nb, const int8_t* a, int64_t lda, const float* sa, const int32_t* ta, int64_t ldsa,
             const uint8_t* b, float* c, int64_t ldc, const float* bias, int64_t ahead) {
    if constexpr (M >= 1) {
        if (m == M) return q6_tile_m<S, M>(nb, a, lda, sa, ta, ldsa, b, c, ldc, bias, ahead);
        return q6_tile<S, M - 1>(m, nb, a, lda, sa, ta, ldsa, b, c, ldc, bias, ahead);
    }
}

// K-quant super-blocks: per block, the 4- or 5-bit sums of q4_tile_m and Q4_1's float step with the block's exact
// ds = d sc and dm = dmin m (kernels.h), computed once for the M rows.
template <class S, int M, bool kFive>
void qk_tile_m(int64_t nb, const int8_t* a, int64_t lda, const float* sa, const int32_t* ta, int64_t ldsa,
               const uint8_t* b, float* c, int64_t ldc, const float* bias, int64_t ahead) {
    constexpr int64_t ss = q4k_super_bytes(kFive), per_block = ss / kQKSuper;
    __m256 sum[M];
#pragma GCC unroll 8
    for (int i = 0; i < M; ++i) sum[i] = _mm256_setzero_ps();
    for (int64_t sb = 0; sb < nb / kQKSuper; ++sb) {
        const uint8_t* sup = b + sb * ss;
        const __m128i* h = reinterpret_cast<const __m128i*>(sup + q4k_halves(kFive));
        const __m256 d = _mm256_cvtph_ps(_mm_loadu_si128(h)), dmin = _mm256_cvtph_ps(_mm_loadu_si128(h + 1));
        for (int q = 0; q < kQKSuper; ++q) {
            if (ahead > 0)  // a block's share of the super-block's bytes ahead, three lines from its start
                for (int64_t line = 0; line < 192; line += 64)
                    _mm_prefetch(reinterpret_cast<const char*>(sup + ahead + q * per_block + line), _MM_HINT_T0);
            const int64_t blk = sb * kQKSuper + q;
            __m256i s32[M];
            S::template sums<M, kFive>(sup + q4k_values(kFive, q), a + blk * kQBlock, lda, s32);
            const __m128i sc = _mm_loadu_si128(reinterpret_cast<const __m128i*>(sup + q4k_scales(kFive, q)));
            const __m256 ds = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(sc)));
            const __m256 dm = _mm256_mul_ps(dmin, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(sc, 8))));
#pragma GCC unroll 8
            for (int i = 0; i < M; ++i) {
                const float sab = sa[i * ldsa + blk];
                const int32_t t = ta[i * ldsa + blk];
                sum[i] = _mm256_fnmadd_ps(dm, _mm256_set1_ps(sab * static_cast<float>(t)), sum[i]);
                sum[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s32[i]), _mm256_mul_ps(_mm256_set1_ps(sab), ds), sum[i]);
            }
        }
    }
    store_tile<M>(sum, c, ldc, bias);
}

template <class S, bool kFive, int M = S::kMR>
void qk_tile(int64_t m, int64_t nb, const int8_t* a, int64_t lda, const float* sa, const int32_t* ta, int64_t ldsa,
             const uint8_t* b, float* c, int64_t ldc, const float* bias, int64_t ahead) {
    if constexpr (M >= 1) {
        if (m == M) return qk_tile_m<S, M, kFive>(nb, a, lda, sa, ta, ldsa, b, c, ldc, bias, ahead);
        return qk_tile<S, kFive, M - 1>(m, nb, a, lda, sa, ta, ldsa, b, c, ldc, bias, ahead);
    }
}

// Low-bit super-blocks: per block, S::sums2<M, kThree>(values, x, lda, s0, s1), the halves' sums I_0 and I_1 (as
// sums6), and kernels.h's Q2_K / Q3_K step.
template <class S, int M, bool kThree>
void q2k_tile_m(int64_t nb, const int8_t* a, int64_t lda, const float* sa, const int32_t* ta, int64_t ldsa,
                const uint8_t* b, float* c, int64_t ldc, const float* bias, int64_t ahead) {
    constexpr int64_t ss = q2k_super_bytes(kThree), per_block = ss / kQKSuper;
    __m256 sum[M];
#pragma GCC unroll 8
    for (int i = 0; i < M; ++i) sum[i] = _mm256_setzero_ps();
    for (int64_t sb = 0; sb < nb / kQKSuper; ++sb) {
        const uint8_t* sup = b + sb * ss;
        const __m128i* h = reinterpret_cast<const __m128i*>(sup + q2k_halves(kThree));
        const __m256 d = _mm256_cvtph_ps(_mm_loadu_si128(h));
        __m256 dmin;
        if constexpr (!kThree) dmin = _mm256_cvtph_ps(_mm_loadu_si128(h + 1));
        for (int q = 0; q < kQKSuper; ++q) {
            if (ahead > 0)  // a block's share of the super-block's bytes ahead, two lines from its start
                for (int64_t line = 0; line < 128; line += 64)
                    _mm_prefetch(reinterpret_cast<const char*>(sup + ahead + q * per_block + line), _MM_HINT_T0);
            const int64_t blk = sb * kQKSuper + q;
            __m256i s0[M], s1[M];
            S::template sums2<M, kThree>(sup + q2k_values(kThree, q), a + blk * kQBlock, lda, s0, s1);
            const uint8_t* scp = sup + q2k_scales(kThree, q);
            __m256i sc0, sc1, m0, m1;
            if constexpr (kThree) {
                sc0 = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(scp)));
                sc1 = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(scp + kQ4Cols)));
            } else {  // sc_h | m_h << 4
                const __m256i p0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(scp)));
                const __m256i p1 =
                    _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(scp + kQ4Cols)));
                const __m256i low = _mm256_set1_epi32(15);
                sc0 = _mm256_and_si256(p0, low), m0 = _mm256_srli_epi32(p0, 4);
                sc1 = _mm256_and_si256(p1, low), m1 = _mm256_srli_epi32(p1, 4);
            }
#pragma GCC unroll 8
            for (int i = 0; i < M; ++i) {
                const int32_t t = ta[i * ldsa + blk];  // the halves' sums, packed (kernels.h)
                const __m256 sab = _mm256_set1_ps(sa[i * ldsa + blk]);
                __m256i v;
                if constexpr (kThree) {
                    v = _mm256_add_epi32(
                        _mm256_mullo_epi32(sc0, _mm256_sub_epi32(s0[i], _mm256_set1_epi32(4 * low16(t)))),
                        _mm256_mullo_epi32(sc1, _mm256_sub_epi32(s1[i], _mm256_set1_epi32(4 * high16(t)))));
                } else {
                    v = _mm256_add_epi32(_mm256_mullo_epi32(sc0, s0[i]), _mm256_mullo_epi32(sc1, s1[i]));
                    const __m256i w = _mm256_add_epi32(_mm256_mullo_epi32(m0, _mm256_set1_epi32(low16(t))),
                                                       _mm256_mullo_epi32(m1, _mm256_set1_epi32(high16(t))));
                    sum[i] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(w), _mm256_mul_ps(sab, dmin), sum[i]);
                }
                sum[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(v), _mm256_mul_ps(sab, d), sum[i]);
            }
        }
    }
    store_tile<M>(sum, c, ldc, bias);
}

template <class S, bool kThree, int M = S::kMR>
void q2k_tile(int64_t m, int64_t nb, const int8_t* a, int64_t lda, const float* sa, const int32_t* ta, int64_t ldsa,
              const uint8_t* b, float* c, int64_t ldc, const float* bias, int64_t ahead) {
    if constexpr (M >= 1) {
        if (m == M) return q2k_tile_m<S, M, kThree>(nb, a, lda, sa, ta, ldsa, b, c, ldc, bias, ahead);
        return q2k_tile<S, kThree, M - 1>(m, nb, a, lda, sa, ta, ldsa, b, c, ldc, bias, ahead);
    }
}

template <class S>
Q4Kernels make_q4_kernels() {
    return Q4Kernels{
        S::kMR,
        {&q4_tile<S, false, false>, &q4_tile<S, true, false>, &q4_tile<S, false, true>, &q4_tile<S, true, true>,
         &q6_tile<S>, &qk_tile<S, false>, &qk_tile<S, true>, &q2k_tile<S, false>, &q2k_tile<S, true>}};
}

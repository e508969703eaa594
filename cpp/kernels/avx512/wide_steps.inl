// The wide tiles' float steps per block (Q4Kernels::wide: kernels.h's formulas on 16 lanes, in their order) and their
// table by kind, shared by the VNNI tiles (int8_vnni.cpp) and the AMX ones (amx/amx_tiles.inl), which make the same
// int32 sums differently: both give the 8-column tile's bits. f: the floats after a wide block's values (its 32
// columns' d, then their minima or packed sub-scales); h: the column half (16 lanes). Included inside the anonymous
// namespace of units compiled with the AVX-512 flags and -ffp-contract=off.

// A 4- or 5-bit block (Q4_0 ... Q5_1, and Q4_K / Q5_K unpacked with ds and -dm as Q4_1's d and m). kOffset: Q4_0's 8
// or Q5_0's 16 (unused with a minimum).
template <bool kMin, int kOffset>
struct Q4WideStep {
    __m512 d[2], mn[2];
    explicit Q4WideStep(const float* f) {
        d[0] = _mm512_loadu_ps(f), d[1] = _mm512_loadu_ps(f + 16);
        if constexpr (kMin) mn[0] = _mm512_loadu_ps(f + 32), mn[1] = _mm512_loadu_ps(f + 48);
    }
    // the row's sum after the block: acc its int32 sums, sab and t its block's scale and sum
    __m512 operator()(int h, __m512i acc, float sab, int32_t t, __m512 sum) const {
        if constexpr (kMin)
            sum = _mm512_fmadd_ps(mn[h], _mm512_set1_ps(sab * static_cast<float>(t)), sum);
        else
            acc = _mm512_sub_epi32(acc, _mm512_set1_epi32(kOffset * t));
        return _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc), _mm512_mul_ps(_mm512_set1_ps(sab), d[h]), sum);
    }
};

// A block summed by half-blocks (Q6_K, Q3_K, Q2_K), column half h. kOffset: Q6_K's 32 or Q3_K's 4, whose unpacked
// panel holds each column's sub-scales packed (pack16) in the minima's place; 0: Q2_K, which holds d and dmin as
// halves (d low) in d's place, and sc_0, sc_1, m_0, m_1 in the four bytes of the minima's int32 (unpack_panel).
template <int kOffset>
struct HalvesWideStep {
    static constexpr bool kMins = kOffset == 0;
    __m512 d, dmin;
    __m512i sc0, sc1, m0, m1;
    HalvesWideStep(const float* f, int h) {
        const __m512i packed = _mm512_loadu_si512(f + 32 + 16 * h);
        if constexpr (kMins) {
            const __m512i halves = _mm512_loadu_si512(f + 16 * h);
            d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(halves));
            dmin = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(halves, 16)));
            const __m512i low = _mm512_set1_epi32(255);
            sc0 = _mm512_and_si512(packed, low), sc1 = _mm512_and_si512(_mm512_srli_epi32(packed, 8), low);
            m0 = _mm512_and_si512(_mm512_srli_epi32(packed, 16), low), m1 = _mm512_srli_epi32(packed, 24);
        } else {
            d = _mm512_loadu_ps(f + 16 * h);
            sc0 = _mm512_srai_epi32(_mm512_slli_epi32(packed, 16), 16), sc1 = _mm512_srai_epi32(packed, 16);
        }
    }
    // the row's sum after the block: acc0 / acc1 the int32 sums of its k halves, sa its block scale, t its halves'
    // sums packed (kernels.h)
    __m512 operator()(__m512i acc0, __m512i acc1, float sa, int32_t t, __m512 s) const {
        const __m512 sab = _mm512_set1_ps(sa);
        __m512i v;
        if constexpr (kMins) {
            v = _mm512_add_epi32(_mm512_mullo_epi32(sc0, acc0), _mm512_mullo_epi32(sc1, acc1));
            const __m512i w = _mm512_add_epi32(_mm512_mullo_epi32(m0, _mm512_set1_epi32(low16(t))),
                                               _mm512_mullo_epi32(m1, _mm512_set1_epi32(high16(t))));
            s = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(w), _mm512_mul_ps(sab, dmin), s);
        } else {
            const __m512i t0 = _mm512_set1_epi32(kOffset * low16(t)), t1 = _mm512_set1_epi32(kOffset * high16(t));
            v = _mm512_add_epi32(_mm512_mullo_epi32(sc0, _mm512_sub_epi32(acc0, t0)),
                                 _mm512_mullo_epi32(sc1, _mm512_sub_epi32(acc1, t1)));
        }
        return _mm512_fmadd_ps(_mm512_cvtepi32_ps(v), _mm512_mul_ps(sab, d), s);
    }
};

// A wide tile's M x 32 sums (+ bias) into C.
template <int M>
inline void store_wide(const __m512 (&sum)[M][2], float* c, int64_t ldc, const float* bias) {
#pragma GCC unroll 16
    for (int i = 0; i < M; ++i)
        for (int h = 0; h < 2; ++h) {
            __m512 v = sum[i][h];
            if (bias) v = _mm512_add_ps(v, _mm512_loadu_ps(bias + 16 * h));
            _mm512_storeu_ps(c + i * ldc + 16 * h, v);
        }
}

// The wide tiles by kind (Q4Kernels::wide, wide_mr) of a set whose tiles are `Wide`'s: Wide::q4<kMin, kOffset> (up to
// Wide::kQ4Rows rows a call) for the 4- and 5-bit kinds (5-bit values are bytes as 4-bit ones once unpacked) and the
// K-quants (unpacked with ds and -dm as Q4_1's d and m); Wide::halves<kOffset> (up to Wide::kHalvesRows) for the
// types summed by half-blocks.
template <class Wide>
void set_wide_tiles(Q4Kernels& q4) {
    q4.wide[q4_kind(false, false)] = Wide::template q4<false, 8>;
    q4.wide[q4_kind(true, false)] = Wide::template q4<true, 0>;
    q4.wide[q4_kind(false, true)] = Wide::template q4<false, 16>;
    q4.wide[q4_kind(true, true)] = Wide::template q4<true, 0>;
    q4.wide[q4k_kind(false)] = q4.wide[q4k_kind(true)] = Wide::template q4<true, 0>;
    q4.wide[kQ6Kind] = Wide::template halves<32>;
    q4.wide[q2k_kind(false)] = Wide::template halves<0>;
    q4.wide[q2k_kind(true)] = Wide::template halves<4>;
    for (int kind = 0; kind < kQ4Kinds; ++kind)
        q4.wide_mr[kind] =
            kind == kQ6Kind || kind == q2k_kind(false) || kind == q2k_kind(true) ? Wide::kHalvesRows : Wide::kQ4Rows;
}

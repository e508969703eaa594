// AVX512-VNNI int8 and 4-bit block kernels and the kernel set that uses them (compiled with -mavx512f -mavx512bw
// -mavx512vl -mavx512vnni -ffp-contract=off).
//
// vpdpbusd multiplies four unsigned bytes by four signed bytes and adds the four products to an int32 lane: 64
// multiply-adds per zmm instruction, where vpdpwssd on int16 pairs (the layout of the other kernel sets) does 32.
// So this set packs its int8 panels in groups of 4 consecutive k per column (Int8Kernels::kgroup = 4), reads A as
// int8 with each block's sum, and makes B unsigned by flipping its sign bit (b + 128, one vpxord per panel register,
// shared by every row): sum (b + 128) a = sum a b + 128 sum a, so each block's int32 sums start at -128 sum a. The
// sums stay exact (|sum| < 2^31 by far), and the float steps are those of int8_kernels.inl in the same order: the
// same bits as every other kernel set (tested).
#include <immintrin.h>

#include <algorithm>
#include <utility>

#include "kernels/kernels.h"

namespace pyattn::kernels {
namespace {

#include "kernels/x86_fields.inl"

constexpr int kGroups = kQBlock / 4;  // groups of 4 k per block

inline __m512i bcast4(const int8_t* p) {
    int32_t v;
    __builtin_memcpy(&v, p, sizeof v);
    return _mm512_set1_epi32(v);
}

#include "kernels/x86_int8_vi.inl"

// int8_kernels.inl's interface on 512-bit registers and vpdpbusd's quads: B's sign bit flipped as it is loaded (one
// vpxord per panel register, shared by every row), each block's sums started at -128 sum a.
struct VI : ViFloat512 {
    static constexpr int W = 16, kGroup = 4;
    using aval = int8_t;
    using ireg = __m512i;
    using breg = __m512i;
    using areg = __m512i;
    static ireg start(const int32_t* ta, int64_t idx) { return _mm512_set1_epi32(-128 * ta[idx]); }
    static breg load_b(const int8_t* p) {
        return _mm512_xor_si512(_mm512_loadu_si512(p), _mm512_set1_epi8(static_cast<char>(0x80)));
    }
    static areg bcast_a(const int8_t* p) { return bcast4(p); }
    static ireg madd(ireg acc, areg a, breg b) { return _mm512_dpbusd_epi32(acc, b, a); }
    static void pin(ireg& acc) { asm("" : "+v"(acc)); }
};

#include "kernels/int8_kernels.inl"

// Int8Kernels::quantize8 with 512-bit registers: per block two masked loads, max |x| and a finiteness check (x * 0 is
// NaN once x is inf or NaN), q = clamp(cvt(x * 127 / amax)) rounded to nearest even (MXCSR's default, as rintf; NaN
// converts to INT_MIN and clamps to -127, as the other sets), narrowed with vpmovdb.
void vnni_quantize8(const float* x, int64_t lda, int64_t m, int64_t k, int8_t* q, int64_t ldq, float* scale,
                    int32_t* sum, int64_t lds) {
    const int64_t nb = (k + kQBlock - 1) / kQBlock;
    const __m512 sign = _mm512_set1_ps(-0.0f), zero = _mm512_setzero_ps();
    const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127);
    for (int64_t i = 0; i < m; ++i)
        for (int64_t blk = 0; blk < nb; ++blk) {
            const int64_t p0 = blk * kQBlock, n = k - p0 < kQBlock ? k - p0 : kQBlock;
            const float* xb = x + i * lda + p0;
            const __mmask16 m0 = n >= 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1u);
            const __mmask16 m1 = n >= 32 ? __mmask16(0xffff) : n > 16 ? __mmask16((1u << (n - 16)) - 1u) : 0;
            const __m512 x0 = _mm512_maskz_loadu_ps(m0, xb), x1 = _mm512_maskz_loadu_ps(m1, xb + 16);
            const __m512 chk = _mm512_add_ps(_mm512_mul_ps(x0, zero), _mm512_mul_ps(x1, zero));
            const bool finite = _mm512_cmp_ps_mask(chk, chk, _CMP_UNORD_Q) == 0;
            const float amax =
                _mm512_reduce_max_ps(_mm512_max_ps(_mm512_andnot_ps(sign, x0), _mm512_andnot_ps(sign, x1)));
            float inv = 0.0f, s = 0.0f;
            if (!finite) {
                s = __builtin_nanf("");
            } else if (amax >= 0x1p-100f) {
                inv = 127.0f / amax;
                s = amax / 127.0f;
            }
            const __m512 vi = _mm512_set1_ps(inv);
            __m512i a0 = _mm512_cvtps_epi32(_mm512_mul_ps(x0, vi)), a1 = _mm512_cvtps_epi32(_mm512_mul_ps(x1, vi));
            a0 = _mm512_min_epi32(_mm512_max_epi32(a0, lo), hi);
            a1 = _mm512_min_epi32(_mm512_max_epi32(a1, lo), hi);
            // the padding past k quantizes to 0 (masked loads give 0, and 0 * inv is 0)
            a0 = _mm512_maskz_mov_epi32(m0, a0);
            a1 = _mm512_maskz_mov_epi32(m1, a1);
            int8_t* y = q + i * ldq + p0;
            _mm_storeu_si128(reinterpret_cast<__m128i*>(y), _mm512_cvtepi32_epi8(a0));
            _mm_storeu_si128(reinterpret_cast<__m128i*>(y + 16), _mm512_cvtepi32_epi8(a1));
            scale[i * lds + blk] = s;
            sum[i * lds + blk] = _mm512_reduce_add_epi32(_mm512_add_epi32(a0, a1));
        }
}

// vpdpbusd on 256-bit registers, for the block sums (EVEX here; the avx_vnni set's VEX)
inline __m256i dpbusd256(__m256i acc, __m256i u, __m256i a) { return _mm256_dpbusd_epi32(acc, u, a); }

#include "kernels/q4_sums_vnni.inl"

#include "kernels/q4_kernels.inl"

#include "kernels/avx512/wide_steps.inl"

// The wide 4- and 5-bit tile (Q4Kernels::wide): M rows by 32 columns of an unpacked panel, whose values are bytes in
// [0, 31] already, so vpdpbusd takes them as its unsigned operand as they are (no sign flip, no correction). Per
// block, the float steps of q4_kernels.inl in their order, on 16 lanes: the same bits as the 8-column tile. kOffset:
// Q4_0's 8 or Q5_0's 16 (unused with a minimum).
template <int M, bool kMin, int kOffset>
void q4_wide_m(int64_t nb, const int8_t* __restrict a, int64_t lda, const float* __restrict sa,
               const int32_t* __restrict ta, int64_t ldsa, const uint8_t* __restrict b, float* __restrict c,
               int64_t ldc, const float* bias) {
    __m512 sum[M][2];
#pragma GCC unroll 8
    for (int i = 0; i < M; ++i) sum[i][0] = sum[i][1] = _mm512_setzero_ps();
    for (int64_t blk = 0; blk < nb; ++blk, b += kQ4WideBlockBytes) {
        __m512i acc[M][2];
#pragma GCC unroll 8
        for (int i = 0; i < M; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_si512();
        const int8_t* ab = a + blk * kQBlock;
#pragma GCC unroll 8
        for (int g = 0; g < kGroups; ++g) {
            const __m512i b0 = _mm512_loadu_si512(b + g * 128), b1 = _mm512_loadu_si512(b + g * 128 + 64);
#pragma GCC unroll 8
            for (int i = 0; i < M; ++i) {
                const __m512i av = bcast4(ab + i * lda + 4 * g);
                acc[i][0] = _mm512_dpbusd_epi32(acc[i][0], b0, av);
                acc[i][1] = _mm512_dpbusd_epi32(acc[i][1], b1, av);
                asm("" : "+v"(acc[i][0]), "+v"(acc[i][1]));
            }
        }
        const Q4WideStep<kMin, kOffset> step(reinterpret_cast<const float*>(b + kQBlock * kQ4Wide));
#pragma GCC unroll 8
        for (int i = 0; i < M; ++i)
            for (int h = 0; h < 2; ++h)
                sum[i][h] = step(h, acc[i][h], sa[i * ldsa + blk], ta[i * ldsa + blk], sum[i][h]);
    }
    store_wide<M>(sum, c, ldc, bias);
}

// The wide tile of the types summed by half-blocks (Q6_K, Q3_K, Q2_K): as q4_wide_m with each block's k halves summed
// apart (groups 0-3 and 4-7), combined with the sub-scales in int32 and kernels.h's float steps on 16 lanes
// (HalvesWideStep): the same bits as the 8-column tile. 4 rows: 16 int32 and 8 float sums, 2 panel
// registers and A's quad (27 of 32 zmm). 6 rows with the float sums kept in C instead (Q6_K's tile before) ran Q3_K
// and Q6_K 10-15% slower (M = 128, K = 2048, N = 8192, 1 thread, Zen 4): the C loads and stores and the spills cost
// more than B's groups read once per 4 rows rather than 6. With the sub-scales applied in float (exact: every product
// and sum an integer below 2^24) instead of vpmulld, no difference this machine could show.
template <int M, int kOffset>
void halves_wide_m(int64_t nb, const int8_t* __restrict a, int64_t lda, const float* __restrict sa,
                   const int32_t* __restrict ta, int64_t ldsa, const uint8_t* __restrict b, float* __restrict c,
                   int64_t ldc, const float* bias) {
    __m512 sum[M][2];
#pragma GCC unroll 8
    for (int i = 0; i < M; ++i) sum[i][0] = sum[i][1] = _mm512_setzero_ps();
    for (int64_t blk = 0; blk < nb; ++blk, b += kQ4WideBlockBytes) {
        __m512i acc[M][2][2];  // row, column half, k half
#pragma GCC unroll 8
        for (int i = 0; i < M; ++i)
            for (int h = 0; h < 2; ++h) acc[i][h][0] = acc[i][h][1] = _mm512_setzero_si512();
        const int8_t* ab = a + blk * kQBlock;
#pragma GCC unroll 8
        for (int g = 0; g < kGroups; ++g) {
            const __m512i b0 = _mm512_loadu_si512(b + g * 128), b1 = _mm512_loadu_si512(b + g * 128 + 64);
#pragma GCC unroll 8
            for (int i = 0; i < M; ++i) {
                const __m512i av = bcast4(ab + i * lda + 4 * g);
                acc[i][0][g / 4] = _mm512_dpbusd_epi32(acc[i][0][g / 4], b0, av);
                acc[i][1][g / 4] = _mm512_dpbusd_epi32(acc[i][1][g / 4], b1, av);
            }
        }
        const float* f = reinterpret_cast<const float*>(b + kQBlock * kQ4Wide);
#pragma GCC unroll 2
        for (int h = 0; h < 2; ++h) {
            const HalvesWideStep<kOffset> step(f, h);
#pragma GCC unroll 8
            for (int i = 0; i < M; ++i)
                sum[i][h] = step(acc[i][h][0], acc[i][h][1], sa[i * ldsa + blk], ta[i * ldsa + blk], sum[i][h]);
        }
    }
    store_wide<M>(sum, c, ldc, bias);
}

template <int kOffset, int M = 4>
void halves_wide(int64_t m, int64_t nb, const int8_t* a, int64_t lda, const float* sa, const int32_t* ta, int64_t ldsa,
                 const uint8_t* b, float* c, int64_t ldc, const float* bias) {
    if constexpr (M >= 1) {
        if (m == M) return halves_wide_m<M, kOffset>(nb, a, lda, sa, ta, ldsa, b, c, ldc, bias);
        return halves_wide<kOffset, M - 1>(m, nb, a, lda, sa, ta, ldsa, b, c, ldc, bias);
    }
}

template <bool kMin, int kOffset, int M = 6>
void q4_wide(int64_t m, int64_t nb, const int8_t* a, int64_t lda, const float* sa, const int32_t* ta, int64_t ldsa,
             const uint8_t* b, float* c, int64_t ldc, const float* bias) {
    if constexpr (M >= 1) {
        if (m == M) return q4_wide_m<M, kMin, kOffset>(nb, a, lda, sa, ta, ldsa, b, c, ldc, bias);
        return q4_wide<kMin, kOffset, M - 1>(m, nb, a, lda, sa, ta, ldsa, b, c, ldc, bias);
    }
}

// This set's wide tiles (set_wide_tiles): 6 x 32 (12 int32 and 12 float sums, 2 panel registers: 27 of 32 zmm), the
// types summed by half-blocks 4 x 32.
struct VnniWide {
    static constexpr int kQ4Rows = 6, kHalvesRows = 4;
    template <bool kMin, int kOffset>
    static constexpr Q4WideKernel q4 = &q4_wide<kMin, kOffset, kQ4Rows>;
    template <int kOffset>
    static constexpr Q4WideKernel halves = &halves_wide<kOffset, kHalvesRows>;
};

// The wide panel's share of one matrix panel (Q4Kernels::unpack): per block, the values as bytes in groups of 4 k (8
// groups of 32 bytes at this panel's place in each group), then its 8 columns' d and m (kernels.h). 32-byte vectors:
// the block layouts' chunks are 32 bytes, and the fields' helpers (x86_fields.inl) take them.
template <int kKind>
void unpack_panel(const uint8_t* src, int64_t nb, int p, uint8_t* dst) {
    constexpr bool kSix = kKind == kQ6Kind, kQK = kKind == q4k_kind(false) || kKind == q4k_kind(true);
    constexpr bool kLow = kKind == q2k_kind(false) || kKind == q2k_kind(true), kThree = kKind == q2k_kind(true);
    constexpr bool kFive = kKind == q4_kind(false, true) || kKind == q4_kind(true, true) || kKind == q4k_kind(true);
    constexpr bool kMin = kKind == q4_kind(true, false) || kKind == q4_kind(true, true);
    constexpr int64_t gs = kQ4Wide * 4;  // a group's bytes; this panel's 32 at p * 32
    auto put = [&](uint8_t* o, int g, __m256i v) {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + g * gs + p * 32), v);
    };
    auto halves = [](const uint8_t* h) {
        return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h)));
    };
    auto bytes8 = [](const uint8_t* b) { return _mm_loadl_epi64(reinterpret_cast<const __m128i*>(b)); };
    auto packed16 = [&](const uint8_t* sc0, const uint8_t* sc1) {  // 8 columns' int8 sub-scales as pack16 does
        return _mm256_or_si256(_mm256_and_si256(_mm256_cvtepi8_epi32(bytes8(sc0)), _mm256_set1_epi32(0xFFFF)),
                               _mm256_slli_epi32(_mm256_cvtepi8_epi32(bytes8(sc1)), 16));
    };
    for (int64_t blk = 0; blk < nb; ++blk) {
        uint8_t* o = dst + blk * kQ4WideBlockBytes;
        float* d = reinterpret_cast<float*>(o + kQBlock * kQ4Wide) + p * kQ4Cols;
        float* mn = d + kQ4Wide;
        const int q = static_cast<int>(blk % kQKSuper);
        if constexpr (kLow) {
            const uint8_t* sup = src + blk / kQKSuper * q2k_super_bytes(kThree);
            const uint8_t* v = sup + q2k_values(kThree, q);
            const __m256i third = kThree ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(v + q2k_third_bits()))
                                         : _mm256_setzero_si256();
            for (int h = 0; h < 2; ++h) {
                const __m256i all = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(v + 32 * h));
#pragma GCC unroll 4
                for (int f = 0; f < 4; ++f) put(o, 4 * h + f, low_bit_values<kThree>(all, third, h, f));
            }
            const uint8_t* sc = sup + q2k_scales(kThree, q);
            const uint8_t* hv = sup + q2k_halves(kThree);
            __m256i dv, mv;
            if constexpr (kThree) {  // d as float, sc_0 | sc_1 << 16 (pack16)
                dv = _mm256_castps_si256(halves(hv));
                mv = packed16(sc, sc + kQ4Cols);
            } else {  // d | dmin << 16 as halves; sc_0, sc_1, m_0, m_1 as bytes (sc_h | m_h << 4 per half)
                dv = _mm256_or_si256(
                    _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(hv))),
                    _mm256_slli_epi32(
                        _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(hv + 2 * kQ4Cols))),
                        16));
                const __m256i s0 = _mm256_cvtepu8_epi32(bytes8(sc)), s1 = _mm256_cvtepu8_epi32(bytes8(sc + kQ4Cols));
                const __m256i l4 = _mm256_set1_epi32(15);
                mv = _mm256_or_si256(
                    _mm256_or_si256(_mm256_and_si256(s0, l4), _mm256_slli_epi32(_mm256_and_si256(s1, l4), 8)),
                    _mm256_or_si256(_mm256_slli_epi32(_mm256_srli_epi32(s0, 4), 16),
                                    _mm256_slli_epi32(_mm256_srli_epi32(s1, 4), 24)));
            }
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(d), dv);
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(mn), mv);
            continue;
        }
        const uint8_t* sup = kQK ? src + blk / kQKSuper * q4k_super_bytes(kFive) : nullptr;
        const uint8_t* v =
            kQK ? sup + q4k_values(kFive, q) : src + blk * (kSix ? q6_block_bytes() : q4_block_bytes(kMin, kFive));
        const __m256i fifth =
            kFive ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(v + q4_fifth_bits())) : _mm256_setzero_si256();
#pragma GCC unroll 4
        for (int c = 0; c < 4; ++c) {
            const __m256i nib = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(v + 32 * c));
            __m256i lo, hi;
            if constexpr (kSix)
                six_bit_values(nib, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(v + q6_high_bits(c))), c, lo,
                               hi);
            else
                five_bit_values<kFive>(nib, fifth, c, lo, hi);
            put(o, c, lo);
            put(o, 4 + c, hi);
        }
        if constexpr (kQK) {  // ds = d sc and -dm = -(dmin m), exact
            const uint8_t* sc = sup + q4k_scales(kFive, q);
            const __m256 dh = halves(sup + q4k_halves(kFive)), dminh = halves(sup + q4k_halves(kFive) + 2 * kQ4Cols);
            _mm256_storeu_ps(d, _mm256_mul_ps(dh, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes8(sc)))));
            const __m256 dm = _mm256_mul_ps(dminh, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes8(sc + kQ4Cols))));
            _mm256_storeu_ps(mn, _mm256_xor_ps(dm, _mm256_set1_ps(-0.0f)));
        } else if constexpr (kSix) {  // sc_0 | sc_1 << 16 (pack16)
            _mm256_storeu_ps(d, halves(v + q6_halves()));
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(mn), packed16(v + q6_scales(0), v + q6_scales(1)));
        } else {
            _mm256_storeu_ps(d, halves(v + q4_halves(kFive)));
            _mm256_storeu_ps(mn, kMin ? halves(v + q4_halves(kFive) + 2 * kQ4Cols) : _mm256_setzero_ps());
        }
    }
}

template <int... kKinds>
void set_unpack(Q4Kernels& q4, std::integer_sequence<int, kKinds...>) {
    ((q4.unpack[kKinds] = &unpack_panel<kKinds>), ...);
}

}  // namespace

// 6 rows x 32 columns: 12 int32 sums and 12 float sums in registers, 2 panel registers and A's broadcast quad (27 of
// 32 zmm). A product of up to 6 rows (a decoding batch, beams) takes one pass over each panel, so no tall tile.
// quantize: the int16 quantizer, for weights at load (the same values as quantize8's, so as every set's).
Int8Kernels avx512_vnni_int8_kernels() {
    Int8Kernels k = make_int8_kernels<6, 2>();
    k.quantize = avx2_int8_kernels().quantize;
    k.quantize8 = &vnni_quantize8;
    return k;
}

// The AVX-512 set with these int8 kernels: everything else is avx512's.
KernelSet& avx512_vnni_kernel_set() {
    static KernelSet ks = [] {
        KernelSet k = avx512_kernel_set();
        k.name = "avx512_vnni";
        k.i8 = avx512_vnni_int8_kernels();
        k.q4 = make_q4_kernels<Q4SumsVnni<6>>();  // 4-bit: up to 6 rows of 8 columns per call
        // and, for many rows, the wide tiles on unpacked panels
        set_unpack(k.q4, std::make_integer_sequence<int, kQ4Kinds>{});
        set_wide_tiles<VnniWide>(k.q4);
        return k;
    }();
    return ks;
}

}  // namespace pyattn::kernels

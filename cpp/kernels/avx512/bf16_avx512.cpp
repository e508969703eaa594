// AVX512_BF16 GEMM micro-kernel and the kernel set that uses it (compiled with -mavx512f -mavx512bw -mavx512vl
// -mavx512vnni -mavx512bf16).
//
// vdpbf16ps multiplies 16 lanes of bfloat16 pairs and adds both products to the lane's float: 64 flops per zmm
// instruction where vfmadd231ps does 32. The blocked path of bfloat16 weights (gemm.cpp's run_blocked_bf16) packs A
// and B into pairs of k (Bf16PairKernels in kernels.h) and runs this 12 x 32 tile: 24 float sums, 2 panel registers,
// and A's pair broadcast from memory (the avx512 set's tile and blocking, so that its packed bfloat16 weights serve
// both paths unchanged).
#include <immintrin.h>

#include "kernels/kernels.h"

namespace pyattn::kernels {
namespace {

template <int MR, int NV>
void bf16_micro(int64_t pairs, const uint32_t* __restrict a, const uint32_t* __restrict b, float* __restrict c,
                int64_t ldc, float beta) {
    __m512 acc[MR][NV];
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
        for (int j = 0; j < NV; ++j) acc[i][j] = _mm512_setzero_ps();
    for (int64_t p = 0; p < pairs; ++p) {
        __m512bh bv[NV];
#pragma GCC unroll 4
        for (int j = 0; j < NV; ++j) bv[j] = (__m512bh)_mm512_loadu_si512(b + j * 16);
#pragma GCC unroll 16
        for (int i = 0; i < MR; ++i) {
            const __m512bh av = (__m512bh)_mm512_set1_epi32(static_cast<int>(a[i]));
#pragma GCC unroll 4
            for (int j = 0; j < NV; ++j) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], av, bv[j]);
        }
        a += MR;
        b += NV * 16;
    }
    const __m512 vb = _mm512_set1_ps(beta);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
        for (int j = 0; j < NV; ++j) {
            float* o = c + i * ldc + j * 16;
            __m512 v = acc[i][j];
            if (beta == 1.0f)
                v = _mm512_add_ps(v, _mm512_loadu_ps(o));
            else if (beta != 0.0f)
                v = _mm512_fmadd_ps(vb, _mm512_loadu_ps(o), v);
            _mm512_storeu_ps(o, v);
        }
}

// Columns of the pair registers after vpunpck{l,h}wd of two panel rows, per 128-bit lane L: lo holds columns
// 8L .. 8L + 3, hi 8L + 4 .. 8L + 7. These indices (into lo:hi) put them back in order, 16 columns at a time.
alignas(64) constexpr int32_t kUnzip[2][16] = {{0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23},
                                               {8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31}};

template <int M>
void bf16_rows_m(int64_t k, const uint32_t* __restrict a, int64_t lda, const uint16_t* __restrict b, int64_t ldb,
                 float* __restrict c, int64_t ldc, float beta) {
    __m512 lo[M], hi[M];
#pragma GCC unroll 16
    for (int i = 0; i < M; ++i) lo[i] = hi[i] = _mm512_setzero_ps();
    const int64_t full = k / 2;
    for (int64_t p = 0; p <= full; ++p) {
        __m512i r0, r1;
        if (p < full) {
            r0 = _mm512_loadu_si512(b + 2 * p * ldb);
            r1 = _mm512_loadu_si512(b + (2 * p + 1) * ldb);
        } else if (k & 1) {
            r0 = _mm512_loadu_si512(b + 2 * p * ldb);
            r1 = _mm512_setzero_si512();
        } else {
            break;
        }
        const __m512bh bl = (__m512bh)_mm512_unpacklo_epi16(r0, r1), bh = (__m512bh)_mm512_unpackhi_epi16(r0, r1);
#pragma GCC unroll 16
        for (int i = 0; i < M; ++i) {
            const __m512bh av = (__m512bh)_mm512_set1_epi32(static_cast<int>(a[i * lda + p]));
            lo[i] = _mm512_dpbf16_ps(lo[i], av, bl);
            hi[i] = _mm512_dpbf16_ps(hi[i], av, bh);
        }
    }
    const __m512i u0 = _mm512_load_si512(kUnzip[0]), u1 = _mm512_load_si512(kUnzip[1]);
    const __m512 vb = _mm512_set1_ps(beta);
#pragma GCC unroll 16
    for (int i = 0; i < M; ++i) {
        __m512 v[2] = {_mm512_permutex2var_ps(lo[i], u0, hi[i]), _mm512_permutex2var_ps(lo[i], u1, hi[i])};
        for (int j = 0; j < 2; ++j) {
            float* o = c + i * ldc + 16 * j;
            if (beta == 1.0f)
                v[j] = _mm512_add_ps(v[j], _mm512_loadu_ps(o));
            else if (beta != 0.0f)
                v[j] = _mm512_fmadd_ps(vb, _mm512_loadu_ps(o), v[j]);
            _mm512_storeu_ps(o, v[j]);
        }
    }
}

template <int M = 14>
void bf16_rows(int64_t m, int64_t k, const uint32_t* a, int64_t lda, const uint16_t* b, int64_t ldb, float* c,
               int64_t ldc, float beta) {
    if constexpr (M >= 1) {
        if (m == M) return bf16_rows_m<M>(k, a, lda, b, ldb, c, ldc, beta);
        return bf16_rows<M - 1>(m, k, a, lda, b, ldb, c, ldc, beta);
    }
}

// The first c of 16 lanes (none for c <= 0, all for c >= 16).
inline __mmask16 first_lanes(int64_t c) { return (__mmask16)(c >= 16 ? 0xffffu : c <= 0 ? 0u : (1u << c) - 1u); }

// Pairs q0 .. q0 + 15 of a row of k floats, rounded to bfloat16 (vcvtne2ps2bf16: nearest even, NaN kept quiet,
// denormals to zero) into one register, pair j in lane j; the floats past k read as 0.
inline __m512i pairs16(const float* a, int64_t k, int64_t q0) {
    const int64_t n = k - 2 * q0;
    __m512 lo, hi;
    if (n >= 32) {
        lo = _mm512_loadu_ps(a + 2 * q0);
        hi = _mm512_loadu_ps(a + 2 * q0 + 16);
    } else {
        lo = _mm512_maskz_loadu_ps(first_lanes(n), a + 2 * q0);
        hi = _mm512_maskz_loadu_ps(first_lanes(n - 16), a + 2 * q0 + 16);
    }
    return (__m512i)_mm512_cvtne2ps_pbh(hi, lo);  // bfloat16 e from lo's e for e < 16: pair j = (k 2j, k 2j + 1)
}

// r[i] lane j -> r[j] lane i (16 x 16 dwords): dwords, then qwords within 128-bit lanes, then the lanes.
inline void transpose16(__m512i (&r)[16]) {
    __m512i a[16], b[16];
    for (int i = 0; i < 8; ++i) {
        a[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        a[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    // b[4 g + c], 128-bit lane L: rows 4g .. 4g + 3 of column 4L + c
    for (int g = 0; g < 4; ++g) {
        b[4 * g] = _mm512_unpacklo_epi64(a[4 * g], a[4 * g + 2]);
        b[4 * g + 1] = _mm512_unpackhi_epi64(a[4 * g], a[4 * g + 2]);
        b[4 * g + 2] = _mm512_unpacklo_epi64(a[4 * g + 1], a[4 * g + 3]);
        b[4 * g + 3] = _mm512_unpackhi_epi64(a[4 * g + 1], a[4 * g + 3]);
    }
    for (int c = 0; c < 4; ++c) {
        const __m512i x0 = _mm512_shuffle_i32x4(b[c], b[4 + c], 0x44), x1 = _mm512_shuffle_i32x4(b[c], b[4 + c], 0xee);
        const __m512i y0 = _mm512_shuffle_i32x4(b[8 + c], b[12 + c], 0x44),
                      y1 = _mm512_shuffle_i32x4(b[8 + c], b[12 + c], 0xee);
        r[c] = _mm512_shuffle_i32x4(x0, y0, 0x88);
        r[4 + c] = _mm512_shuffle_i32x4(x0, y0, 0xdd);
        r[8 + c] = _mm512_shuffle_i32x4(x1, y1, 0x88);
        r[12 + c] = _mm512_shuffle_i32x4(x1, y1, 0xdd);
    }
}

// Bf16PairKernels::pack. Row-major: 16 pairs per conversion and store. A panel: 16 rows' 16 pairs converted, turned
// around in registers and stored 16 pairs of m rows at a time (the scalar pairing cost 7% of a bfloat16 MiniLM).
void pack_pairs(const float* a, int64_t lda, int64_t m, int64_t k, uint32_t* dst, int64_t ldd, int64_t step) {
    const int64_t pairs = (k + 1) / 2;
    if (step == 1) {
        for (int64_t i = 0; i < m; ++i)
            for (int64_t q = 0; q < pairs; q += 16)
                _mm512_mask_storeu_epi32(dst + i * ldd + q, first_lanes(pairs - q), pairs16(a + i * lda, k, q));
        return;
    }
    const __mmask16 rows = first_lanes(m);
    for (int64_t q = 0; q < pairs; q += 16) {
        __m512i r[16];
        for (int i = 0; i < 16; ++i) r[i] = i < m ? pairs16(a + i * lda, k, q) : _mm512_setzero_si512();
        transpose16(r);
        const int64_t n = pairs - q < 16 ? pairs - q : 16;
        for (int64_t j = 0; j < n; ++j) _mm512_mask_storeu_epi32(dst + (q + j) * step, rows, r[j]);
    }
}

}  // namespace

// The AVX512-VNNI set with this micro-kernel for bfloat16 weights.
KernelSet& avx512_bf16_kernel_set() {
    static KernelSet ks = [] {
        KernelSet k = avx512_vnni_kernel_set();
        k.name = "avx512_bf16";
        if (k.blocking.mr == 12 && k.blocking.nr == 32) {
            k.bf16pairs.micro = &bf16_micro<12, 2>;
            // up to 14 rows (28 sums, 2 panel registers, the broadcast): the small-M and tall paths
            k.bf16pairs.rows = &bf16_rows<14>;
            k.bf16pairs.rows_max = 14;
            k.bf16pairs.pack = &pack_pairs;
        }
        return k;
    }();
    return ks;
}

}  // namespace pyattn::kernels

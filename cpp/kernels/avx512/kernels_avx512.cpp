// AVX-512F kernel set (compiled with -mavx512f and friends). 12 x 32 GEMM tile: 24 zmm accumulators, 2
// for B, 1 broadcast, out of 32 registers. On Zen 4 a zmm FMA runs on both 256-bit pipes, so the peak
// equals AVX2's; the gain is half the instructions per flop and a larger tile (less packing traffic).
#include <immintrin.h>

#include "kernels/half.h"
#include "kernels/kernels.h"

namespace pyattn::kernels {
namespace {

#include "kernels/vec_math.inl"
#include "kernels/x86_transpose.inl"

struct V {
    using reg = __m512;
    static constexpr bool kTranspose8 = true;  // transpose8x8 and transpose4x8 available
    static constexpr int kDotRows = 8;         // rows of A per pass of the dot kernel
    static constexpr int W = 16;
    static reg zero() { return _mm512_setzero_ps(); }
    static reg set1(float x) { return _mm512_set1_ps(x); }
    static reg load(const float* p) { return _mm512_loadu_ps(p); }
    static reg load_h(const uint16_t* p) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)p)); }
    static void store_h(uint16_t* p, reg v) {
        _mm256_storeu_si256((__m256i*)p, _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
    }
    static reg load_bf16(const uint16_t* p) {
        const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p));
        return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
    }
    static reg round_bf16(reg v) {
        const __m512i x = _mm512_castps_si512(v), hi = _mm512_set1_epi32((int)0xffff0000u);
        const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(x, 16), _mm512_set1_epi32(1));
        const __m512i r = _mm512_and_si512(_mm512_add_epi32(x, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), lsb)), hi);
        const __m512i q = _mm512_and_si512(_mm512_or_si512(x, _mm512_set1_epi32(0x400000)), hi);  // quiet NaN
        return _mm512_castsi512_ps(_mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), q));
    }
    static void store(float* p, reg v) { _mm512_storeu_ps(p, v); }
    static __mmask16 tail(int64_t n) { return (__mmask16)((1u << n) - 1u); }
    static reg load_n(const float* p, int64_t n) { return _mm512_maskz_loadu_ps(tail(n), p); }
    static void store_n(float* p, reg v, int64_t n) { _mm512_mask_storeu_ps(p, tail(n), v); }
    static reg fmadd(reg a, reg b, reg c) { return _mm512_fmadd_ps(a, b, c); }
    static reg add(reg a, reg b) { return _mm512_add_ps(a, b); }
    static reg sub(reg a, reg b) { return _mm512_sub_ps(a, b); }
    static reg mul(reg a, reg b) { return _mm512_mul_ps(a, b); }
    static reg div(reg a, reg b) { return _mm512_div_ps(a, b); }
    static reg max(reg a, reg b) { return _mm512_max_ps(a, b); }
    static reg min(reg a, reg b) { return _mm512_min_ps(a, b); }
    static reg abs(reg a) { return _mm512_abs_ps(a); }
    static reg copysign(reg mag, reg sgn) {
        const __m512i sm = _mm512_set1_epi32(0x80000000);
        const __m512i m = _mm512_andnot_si512(sm, _mm512_castps_si512(mag));
        const __m512i s = _mm512_and_si512(sm, _mm512_castps_si512(sgn));
        return _mm512_castsi512_ps(_mm512_or_si512(m, s));
    }
    static reg round(reg a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
    static reg pow2i(reg n) {
        const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
        return _mm512_castsi512_ps(e);
    }
    static reg zero_where_less(reg x, reg thr, reg y) {
        return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, thr, _CMP_NLT_UQ), y);
    }
    static float hsum(reg v) { return _mm512_reduce_add_ps(v); }
    static float hmax(reg v) { return _mm512_reduce_max_ps(v); }
    static reg exp(reg x) { return poly_exp<V>(x); }
    static reg erf(reg x) { return poly_erf<V>(x); }
    static reg tanh(reg x) { return poly_tanh<V>(x); }
    static reg mask_neg_inf(reg s, const uint8_t* m) {
        const __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)m));
        const __mmask16 k = _mm512_test_epi32_mask(b, b);
        return _mm512_mask_mov_ps(s, k, _mm512_set1_ps(-__builtin_inff()));
    }
};

#include "kernels/generic_kernels.inl"

}  // namespace

KernelSet& avx512_kernel_set() {
    // MC x KC = 192 x 512 floats (384 KiB) of A in L2; a KC x NR panel of B (64 KiB) streams from L2 -- at
    // 2 B loads per 24 FMAs the panel need not fit L1. Chosen with benchmarks/gym/gemm_blocking.py on Zen 4:
    // larger KC mostly wins (fewer passes over C), MC 192..384 is flat.
    // Tall rows kernel: 14 x 32 (28 accumulators + 2 B + 1 broadcast = 31 registers), so that 13-14 rows
    // (a short sentence) take one pass over each weight panel.
    // int8 and 4-bit blocks: the AVX2 kernels (they run on every AVX-512 CPU) until 512-bit / VNNI ones are written
    // and tested on a machine that has them.
    static KernelSet ks =
        make_kernel_set<12, 2, 14, 2>("avx512", 192, 512, 4096, avx2_int8_kernels(), avx2_q4_kernels());
    return ks;
}

}  // namespace pyattn::kernels

// AVX2 + FMA kernel set (compiled with -mavx2 -mfma). 6 x 16 GEMM tile: 12 ymm accumulators, 2 for B,
// 1 broadcast -- the classic Haswell..Zen 3 choice (BLIS ships the same shape).
#include <immintrin.h>

#include "kernels/half.h"
#include "kernels/kernels.h"

namespace pyattn::kernels {
namespace {

#include "kernels/vec_math.inl"
#include "kernels/x86_transpose.inl"

alignas(32) const int32_t kTailMask[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};

struct V {
    using reg = __m256;
    static constexpr bool kTranspose8 = true;  // transpose8x8 and transpose4x8 available
    static constexpr int kDotRows = 6;         // rows of A per pass of the dot kernel
    static constexpr int W = 8;
    static reg zero() { return _mm256_setzero_ps(); }
    static reg set1(float x) { return _mm256_set1_ps(x); }
    static reg load(const float* p) { return _mm256_loadu_ps(p); }
    static reg load_h(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p)); }
    static void store_h(uint16_t* p, reg v) {
        _mm_storeu_si128((__m128i*)p, _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
    }
    static reg load_bf16(const uint16_t* p) {
        const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p));
        return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
    }
    static reg round_bf16(reg v) {
        const __m256i x = _mm256_castps_si256(v), hi = _mm256_set1_epi32((int)0xffff0000u);
        const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(x, 16), _mm256_set1_epi32(1));
        const __m256i r = _mm256_and_si256(_mm256_add_epi32(x, _mm256_add_epi32(_mm256_set1_epi32(0x7fff), lsb)), hi);
        const __m256i q = _mm256_and_si256(_mm256_or_si256(x, _mm256_set1_epi32(0x400000)), hi);  // quiet NaN
        return _mm256_blendv_ps(_mm256_castsi256_ps(r), _mm256_castsi256_ps(q), _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    }
    static void store(float* p, reg v) { _mm256_storeu_ps(p, v); }
    static __m256i tail(int64_t n) { return _mm256_loadu_si256((const __m256i*)(kTailMask + 8 - n)); }
    static reg load_n(const float* p, int64_t n) { return _mm256_maskload_ps(p, tail(n)); }
    static void store_n(float* p, reg v, int64_t n) { _mm256_maskstore_ps(p, tail(n), v); }
    static reg fmadd(reg a, reg b, reg c) { return _mm256_fmadd_ps(a, b, c); }
    static reg add(reg a, reg b) { return _mm256_add_ps(a, b); }
    static reg sub(reg a, reg b) { return _mm256_sub_ps(a, b); }
    static reg mul(reg a, reg b) { return _mm256_mul_ps(a, b); }
    static reg div(reg a, reg b) { return _mm256_div_ps(a, b); }
    static reg max(reg a, reg b) { return _mm256_max_ps(a, b); }
    static reg min(reg a, reg b) { return _mm256_min_ps(a, b); }
    static reg abs(reg a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a); }
    static reg copysign(reg mag, reg sgn) {
        const reg sm = _mm256_set1_ps(-0.0f);
        return _mm256_or_ps(_mm256_andnot_ps(sm, mag), _mm256_and_ps(sm, sgn));
    }
    static reg round(reg a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
    static reg pow2i(reg n) {
        const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
        return _mm256_castsi256_ps(e);
    }
    static reg zero_where_less(reg x, reg thr, reg y) { return _mm256_andnot_ps(_mm256_cmp_ps(x, thr, _CMP_LT_OQ), y); }
    static float hsum(reg v) {
        __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        s = _mm_add_ss(s, _mm_movehdup_ps(s));
        return _mm_cvtss_f32(s);
    }
    static float hmax(reg v) {
        __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        s = _mm_max_ps(s, _mm_movehl_ps(s, s));
        s = _mm_max_ss(s, _mm_movehdup_ps(s));
        return _mm_cvtss_f32(s);
    }
    static reg exp(reg x) { return poly_exp<V>(x); }
    static reg erf(reg x) { return poly_erf<V>(x); }
    static reg tanh(reg x) { return poly_tanh<V>(x); }
    static reg mask_neg_inf(reg s, const uint8_t* m) {
        const __m256i b = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)m));
        const reg is_masked = _mm256_castsi256_ps(_mm256_cmpgt_epi32(b, _mm256_setzero_si256()));
        return _mm256_blendv_ps(s, _mm256_set1_ps(-__builtin_inff()), is_masked);
    }
};

#include "kernels/generic_kernels.inl"

}  // namespace

KernelSet& avx2_kernel_set() {
    // MC x KC = 288 x 256 floats (288 KiB) of A in L2 (fits Zen 3 512 KiB too), KC x NR = 16 KiB panel of B in
    // L1, NC for L3. From benchmarks/gym/gemm_blocking.py on Zen 4.
    static KernelSet ks = make_kernel_set<6, 2, 6, 2>("avx2", 288, 256, 4080, avx2_int8_kernels(), avx2_q4_kernels());
    return ks;
}

}  // namespace pyattn::kernels

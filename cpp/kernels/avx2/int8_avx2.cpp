// AVX2 int8 kernels (compiled with -mavx2 -mfma -ffp-contract=off). The panel's 32 columns as four 8-column quarters
// (16 bytes each, sign-extended to int16 with vpmovsxbw), A's pair broadcast, one vpmaddwd + vpaddd per 8 columns
// and pair: 16 multiply-adds, exact (pmaddubsw's u8 x s8 pairs can saturate int16; int16 x int16 pairs cannot).
// On Zen 3 vpmaddwd + vpaddd does 16 multiply-adds in 2 ops where an FMA does 8 in 1; with the sums held in
// registers (pin, below) it measured 1.05-1.6x float32's GEMM at M = 512-4096, and where the weights' bytes
// are the limit (decoding, small batches) it reads 1.125 bytes per weight instead of 4.
#include <immintrin.h>

#include "kernels/kernels.h"

namespace pyattn::kernels {
namespace {

#include "kernels/x86_int8_vi.inl"

struct VI : ViFloat256 {
    static constexpr int W = 8, kGroup = 2;
    using aval = int16_t;
    using ireg = __m256i;
    using breg = __m256i;
    using areg = __m256i;
    static ireg start(const int32_t*, int64_t) { return _mm256_setzero_si256(); }
    static breg load_b(const int8_t* p) { return _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)p)); }
    static areg bcast_a(const int16_t* p) {
        int32_t v;
        __builtin_memcpy(&v, p, sizeof v);
        return _mm256_set1_epi32(v);
    }
    static ireg madd(ireg acc, areg a, breg b) { return _mm256_add_epi32(acc, _mm256_madd_epi16(a, b)); }
    // Keeps each sum where it is as the products come: left free, GCC computed a row's products first and spilled them
    static void pin(ireg& acc) { asm("" : "+x"(acc)); }
    static float absmax(const float* x, int64_t k, bool* finite) {
        const __m256 sign = _mm256_set1_ps(-0.0f), zero = _mm256_setzero_ps();
        __m256 m0 = zero, m1 = zero, chk = zero;  // chk accumulates x * 0: NaN once any x is inf or NaN
        int64_t p = 0;
        for (; p + 16 <= k; p += 16) {
            const __m256 x0 = _mm256_loadu_ps(x + p), x1 = _mm256_loadu_ps(x + p + 8);
            m0 = _mm256_max_ps(m0, _mm256_andnot_ps(sign, x0));
            m1 = _mm256_max_ps(m1, _mm256_andnot_ps(sign, x1));
            chk = _mm256_add_ps(chk, _mm256_add_ps(_mm256_mul_ps(x0, zero), _mm256_mul_ps(x1, zero)));
        }
        for (; p + 8 <= k; p += 8) {
            const __m256 x0 = _mm256_loadu_ps(x + p);
            m0 = _mm256_max_ps(m0, _mm256_andnot_ps(sign, x0));
            chk = _mm256_add_ps(chk, _mm256_mul_ps(x0, zero));
        }
        m0 = _mm256_max_ps(m0, m1);
        __m128 h = _mm_max_ps(_mm256_castps256_ps128(m0), _mm256_extractf128_ps(m0, 1));
        h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        h = _mm_max_ss(h, _mm_movehdup_ps(h));
        float m = _mm_cvtss_f32(h);
        bool ok = _mm256_movemask_ps(_mm256_cmp_ps(chk, chk, _CMP_UNORD_Q)) == 0;
        for (; p < k; ++p) {
            const float a = __builtin_fabsf(x[p]);
            ok = ok && a <= 3.40282347e38f;
            m = a > m ? a : m;
        }
        *finite = ok;
        return m;
    }
    static void quantize_row(const float* x, int64_t k, int16_t* q, float inv) {
        const __m256 vi = _mm256_set1_ps(inv);
        const __m256i lo = _mm256_set1_epi32(-127), hi = _mm256_set1_epi32(127);
        int64_t p = 0;
        for (; p + 16 <= k; p += 16) {
            // cvtps rounds to nearest even (MXCSR's default, as rintf); NaN converts to INT_MIN, clamped to -127
            __m256i a = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + p), vi));
            __m256i b = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + p + 8), vi));
            a = _mm256_min_epi32(_mm256_max_epi32(a, lo), hi);
            b = _mm256_min_epi32(_mm256_max_epi32(b, lo), hi);
            // packs works per 128-bit lane: [a0-3 b0-3 a4-7 b4-7]; the permute restores the order
            const __m256i ab = _mm256_permute4x64_epi64(_mm256_packs_epi32(a, b), 0xd8);
            _mm256_storeu_si256((__m256i*)(q + p), ab);
        }
        for (; p < k; ++p) {
            float v = x[p] * inv;
            if (!(v >= -127.0f)) v = -127.0f;
            if (v > 127.0f) v = 127.0f;
            q[p] = static_cast<int16_t>(__builtin_rintf(v));
        }
    }
};

#include "kernels/int8_kernels.inl"

}  // namespace

// 2 rows x 32 columns: 8 int32 sums, 4 panel registers and A's broadcast pair (13 of 16 ymm; the 8 float sums, used
// once per block, live on the stack). Measured on Zen 3, 1 thread, the kernel alone (a /tmp probe, one binary,
// interleaved, best of 5) at M = 504 with K x N = 576 x 3072, 1536 x 576, 3072 x 768 and M = 4092 with 384 x 1152:
// 6 x 2 unpinned (the previous tile) 53-75 GFLOP/s, 4 x 2 pinned 93-116, 2 x 3 pinned 111-120, 2 x 4 pinned 104-120.
// The p loop unrolled 16 rather than 4 was worth another 1.2-1.5x.
// The tall tile (products of up to 6 rows: decoding batches, beams): 6 x 16 slices of the 32-column panel.
Int8Kernels avx2_int8_kernels() { return make_int8_kernels<2, 4, 6, 2>(); }

}  // namespace pyattn::kernels

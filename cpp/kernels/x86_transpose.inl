// 8 x 8 and 4 x 8 float transposes with AVX (unpack / shuffle / 128-bit lane permute), shared by the AVX2 and
// AVX-512 kernel sets (B panels from transposed weights, A panels). Included inside their anonymous namespaces.

// dst[i * ldd + r] = scale * src[r * lds + i] for r, i < 8 (scale 1 copies every value exactly, NaN and -0 too).
inline void transpose8x8(const float* src, int64_t lds, float* dst, int64_t ldd, float scale = 1.0f) {
    const __m256 s = _mm256_set1_ps(scale);
    const __m256 r0 = _mm256_mul_ps(s, _mm256_loadu_ps(src));
    const __m256 r1 = _mm256_mul_ps(s, _mm256_loadu_ps(src + lds));
    const __m256 r2 = _mm256_mul_ps(s, _mm256_loadu_ps(src + 2 * lds));
    const __m256 r3 = _mm256_mul_ps(s, _mm256_loadu_ps(src + 3 * lds));
    const __m256 r4 = _mm256_mul_ps(s, _mm256_loadu_ps(src + 4 * lds));
    const __m256 r5 = _mm256_mul_ps(s, _mm256_loadu_ps(src + 5 * lds));
    const __m256 r6 = _mm256_mul_ps(s, _mm256_loadu_ps(src + 6 * lds));
    const __m256 r7 = _mm256_mul_ps(s, _mm256_loadu_ps(src + 7 * lds));
    const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
    const __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
    const __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
    const __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
    const __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    const __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    const __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    const __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    _mm256_storeu_ps(dst + 0 * ldd, _mm256_permute2f128_ps(s0, s4, 0x20));
    _mm256_storeu_ps(dst + 1 * ldd, _mm256_permute2f128_ps(s1, s5, 0x20));
    _mm256_storeu_ps(dst + 2 * ldd, _mm256_permute2f128_ps(s2, s6, 0x20));
    _mm256_storeu_ps(dst + 3 * ldd, _mm256_permute2f128_ps(s3, s7, 0x20));
    _mm256_storeu_ps(dst + 4 * ldd, _mm256_permute2f128_ps(s0, s4, 0x31));
    _mm256_storeu_ps(dst + 5 * ldd, _mm256_permute2f128_ps(s1, s5, 0x31));
    _mm256_storeu_ps(dst + 6 * ldd, _mm256_permute2f128_ps(s2, s6, 0x31));
    _mm256_storeu_ps(dst + 7 * ldd, _mm256_permute2f128_ps(s3, s7, 0x31));
}

// dst[i * ldd + r] = scale * src[r * lds + i] for r < 4, i < 8: four rows of eight floats into eight columns of four.
inline void transpose4x8(const float* src, int64_t lds, float* dst, int64_t ldd, float scale = 1.0f) {
    const __m256 s = _mm256_set1_ps(scale);
    const __m256 r0 = _mm256_mul_ps(s, _mm256_loadu_ps(src));
    const __m256 r1 = _mm256_mul_ps(s, _mm256_loadu_ps(src + lds));
    const __m256 r2 = _mm256_mul_ps(s, _mm256_loadu_ps(src + 2 * lds));
    const __m256 r3 = _mm256_mul_ps(s, _mm256_loadu_ps(src + 3 * lds));
    // t0 = [r0_0 r1_0 r0_1 r1_1 | r0_4 r1_4 r0_5 r1_5], t2 the same of rows 2 and 3; c04 = [column 0 | column 4]
    const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
    const __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
    const __m256 c04 = _mm256_shuffle_ps(t0, t2, 0x44), c15 = _mm256_shuffle_ps(t0, t2, 0xEE);
    const __m256 c26 = _mm256_shuffle_ps(t1, t3, 0x44), c37 = _mm256_shuffle_ps(t1, t3, 0xEE);
    _mm_storeu_ps(dst + 0 * ldd, _mm256_castps256_ps128(c04));
    _mm_storeu_ps(dst + 1 * ldd, _mm256_castps256_ps128(c15));
    _mm_storeu_ps(dst + 2 * ldd, _mm256_castps256_ps128(c26));
    _mm_storeu_ps(dst + 3 * ldd, _mm256_castps256_ps128(c37));
    _mm_storeu_ps(dst + 4 * ldd, _mm256_extractf128_ps(c04, 1));
    _mm_storeu_ps(dst + 5 * ldd, _mm256_extractf128_ps(c15, 1));
    _mm_storeu_ps(dst + 6 * ldd, _mm256_extractf128_ps(c26, 1));
    _mm_storeu_ps(dst + 7 * ldd, _mm256_extractf128_ps(c37, 1));
}

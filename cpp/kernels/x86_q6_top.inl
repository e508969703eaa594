// The top two bits of a 6-bit panel chunk's values (kernels.h: the vector q6_high_bits, field f = q6_high_field) moved
// to bits 4-5 of each byte, to be ORed over the chunk's nibbles. 16-bit shifts: the bits a shift carries in from the
// neighbouring byte are masked off. Included inside the anonymous namespace of the AVX2 and VNNI block kernels.
inline __m256i q6_top(__m256i top, int f) {
    const __m256i bits45 = _mm256_set1_epi8(0x30);
    if (f < 2) return _mm256_and_si256(_mm256_slli_epi16(top, 4 - 2 * f), bits45);
    if (f == 2) return _mm256_and_si256(top, bits45);
    return _mm256_and_si256(_mm256_srli_epi16(top, 2), bits45);
}

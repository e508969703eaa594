// The block kernels' bit fields (kernels.h: the fifth bits of 5-bit values, the top two bits of 6-bit ones, the third
// bits of 3-bit ones): bits [from, from + width) of each byte of v moved to bits [to, to + width), the rest zero
// (`keep`: the field's mask at `to`), to be ORed over the lower bits of the same values. 16-bit shifts: the bits a
// shift carries in from the neighbouring byte land below `to` (left shifts) or at from + width and above (right
// shifts), outside the mask. Included inside the anonymous namespace of the AVX2 and VNNI block kernels.
inline __m256i move_field(__m256i v, int from, int to, int keep) {
    const __m256i mask = _mm256_set1_epi8(static_cast<char>(keep));
    if (from < to) return _mm256_and_si256(_mm256_slli_epi16(v, to - from), mask);
    if (from > to) return _mm256_and_si256(_mm256_srli_epi16(v, from - to), mask);
    return _mm256_and_si256(v, mask);
}

// Chunk c's values' fifth bits at bit 4 (its low nibbles: high = 0) ...
inline __m256i fifth_bits(__m256i fields, int ch, int high) {
    return move_field(fields, q4_fifth_field(ch, high), 4, 0x10);
}
// ... their top two bits at bits 4-5 (6-bit) ...
inline __m256i top_bits(__m256i fields, int ch, int high) {
    return move_field(fields, 2 * q6_high_field(ch, high), 4, 0x30);
}
// ... and a low-bit block's third bits at bit 2 (half h, field f).
inline __m256i third_bits(__m256i fields, int h, int f) { return move_field(fields, q2k_third_field(h, f), 2, 0x04); }

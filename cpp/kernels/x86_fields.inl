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

// A 4- or 5-bit block's chunk ch as two vectors of values: its low nibbles (k = 4 ch + s) and its high ones (16 + 4 ch
// + s), 5-bit: each with its fifth bit from the block's fifth-bit bytes `fifth`.
template <bool kFive>
inline void five_bit_values(__m256i nibbles, __m256i fifth, int ch, __m256i& lo, __m256i& hi) {
    const __m256i low = _mm256_set1_epi8(15);
    lo = _mm256_and_si256(nibbles, low), hi = _mm256_and_si256(_mm256_srli_epi16(nibbles, 4), low);
    if (kFive) lo = _mm256_or_si256(lo, fifth_bits(fifth, ch, 0)), hi = _mm256_or_si256(hi, fifth_bits(fifth, ch, 1));
}

// A 6-bit block's chunk ch as two vectors of values: its low nibbles (k = 4 ch + s) and its high ones (16 + 4 ch + s),
// each with its top two bits from the chunk's field vector `top`.
inline void six_bit_values(__m256i nibbles, __m256i top, int ch, __m256i& lo, __m256i& hi) {
    const __m256i low = _mm256_set1_epi8(15);
    lo = _mm256_or_si256(_mm256_and_si256(nibbles, low), top_bits(top, ch, 0));
    hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(nibbles, 4), low), top_bits(top, ch, 1));
}

// A low-bit block's values of half h, field f (kernels.h): their two low bits from the half's 32 bytes `values` and,
// 3-bit, their third bits from the block's third-bit bytes `third`.
template <bool kThree>
inline __m256i low_bit_values(__m256i values, __m256i third, int h, int f) {
    const __m256i u = move_field(values, 2 * f, 0, 3);
    return kThree ? _mm256_or_si256(u, third_bits(third, h, f)) : u;
}

// The kernel table: the only interface between ISA-specific code (cpp/kernels/<isa>/) and the
// ISA-free rest of the core. One KernelSet per instruction set; cpp/cpu/ picks one at import.
//
// Every function here computes in float32 (16-bit weights are widened on load; int8 products are summed in
// int32 and dequantized to float32) and follows one contract:
//   * pointers may be unaligned; lengths may be anything >= 0 (edge tiles are the caller's, see below);
//   * a function with a `beta` argument never reads C when beta == 0 (C may hold NaN garbage);
//   * functions documented "y may alias x" work in place.
#pragma once
#include <cstdint>
#include <cstring>

namespace pyattn::kernels {

// Register tile and cache blocking of the GEMM micro-kernel, after Goto & van de Geijn (2008):
//   MR x NR  register tile of C updated by one micro-kernel call (NR is a multiple of the vector width),
//   KC       depth of a packed panel: a KC x NR panel of B stays in L1 across the MR loop,
//   MC       rows of the packed A block (MC x KC) that stays in L2,
//   NC       columns of the packed B block (KC x NC) that stays in L3.
struct GemmBlocking {
    int mr, nr, mc, kc, nc;
};

enum class Activation : int { none = 0, relu = 1, gelu_erf = 2, gelu_tanh = 3, silu = 4 };

// C[MR x NR] = A_panel (MR x k) * B_panel (k x NR) + beta * C.
//   a: packed, element (i, p) at a[p * MR + i];   b: element (p, j) at b[p * ldb + j] (ldb = NR when packed);
//   c: row-major tile with row stride ldc. Always a full tile: the driver handles edges.
using MicroKernel = void (*)(int64_t k, const float* a, const float* b, int64_t ldb, float* c, int64_t ldc, float beta);

// Small-M path (decoding): C[m x NR] = A (m x k, rows in place, row stride lda) * B (k x NR, row stride ldb)
// + beta * C, for 1 <= m <= MR. Reads A without packing, so a 1-row GEMV streams B once.
using RowsKernel = void (*)(int64_t m, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
                            int64_t ldc, float beta);

// The same with B panels of 16-bit floats (IEEE half or bfloat16, as uint16), widened to float in registers: a
// decode step reads half the bytes of float weights (models stored in float16 lose nothing: every half is a float).
using RowsKernelHalf = void (*)(int64_t m, int64_t k, const float* a, int64_t lda, const uint16_t* b, int64_t ldb,
                                float* c, int64_t ldc, float beta);

// C[m x n] = A (m x k, row stride lda) * W^T + beta * C where W is (n x k), row stride ldw: dot products of
// rows, the natural layout for weights stored [out, in] and for attention scores q . k_j. Any m, n.
using DotKernel = void (*)(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* w, int64_t ldw,
                           float* c, int64_t ldc, float beta);

// Packs one B panel from B given transposed (W, rows j of length >= kc, row stride ldw):
// panel[p * nr + j] = w[j * ldw + p] for p < kc, j < cols; columns [cols, nr) are zero.
using PackTransKernel = void (*)(const float* w, int64_t ldw, int64_t kc, int64_t cols, int nr, float* panel);

// The 16-bit float formats of B panels, an index into KernelSet::half.
enum class HalfFormat : int { f16 = 0, bf16 = 1 };

struct HalfKernels {
    RowsKernelHalf rows;                                    // the small-M kernel
    RowsKernelHalf tall;                                    // the tall kernel
    void (*widen)(const uint16_t* x, float* y, int64_t n);  // y[i] = float(x[i]), for the blocked path
};

// ---- int8 ----
// C = dequant(Aq Bq), both quantized symmetrically in blocks of kQBlock consecutive k (GGUF's Q8_0 x Q8_0, as
// llama.cpp computes it): B per (column, block), A per (row, block) at the GEMM's input. k is padded with zeros to
// kp = nb * kQBlock. The panel groups kgroup consecutive k of a column (2 or 4, the kernel set's choice):
//   a:  the quantized rows of A, values in [-127, 127], row stride lda (elements): int16 when kgroup is 2 (the
//       kernels multiply and add the pairs (2p, 2p + 1) in one step: pmaddwd, vpdpwssd), int8 when it is 4
//       (vpdpbusd: four u8 x s8 products per int32 lane);
//   sa: per row, nb block scales (row stride ldsa); ta: per row, the nb blocks' integer sums sum_k Aq[i][k] (same
//       stride), read by the int8-A kernels only;
//   b:  one packed panel of nr columns: per block, kQBlock / kgroup groups of nr columns of kgroup bytes: byte
//       (p, j, t) at b[(p * nr + j) * kgroup + t] = Bq[kgroup p + t][j] (p counting groups from the panel's start);
//   sw: the panel's scales, nb x nr floats (block-major);
//   c[i][j] = s_nb, where s_0 = 0 and s_{b+1} = fma(float(sum_{k in b} Aq[i][k] Bq[k][j]), sa[i][b] * sw[b][j], s_b);
//   then c[i][j] + bias[j] (one add) when bias is non-null.
// The int32 sums of a block are exact, and the float steps are the same operations in the same order in every
// kernel set (the scalar one calls fmaf), so every kernel set gives the same bits (tested).
constexpr int kQBlock = 32;

using Int8Kernel = void (*)(int64_t m, int64_t nb, const void* a, int64_t lda, const float* sa, const int32_t* ta,
                            int64_t ldsa, const int8_t* b, const float* sw, float* c, int64_t ldc, const float* bias,
                            int64_t ahead);

struct Int8Kernels {
    int mr, nr;       // register tile: up to mr rows of A by one nr-column panel
    int kgroup;       // consecutive k of a column in the panel: 2 (int16 A) or 4 (int8 A with block sums)
    Int8Kernel tile;  // 1 <= m <= mr rows, all nr columns
    int tall_mr;      // the tall tile: up to tall_mr rows by one whole panel, for products of mr < M <= tall_mr rows
    Int8Kernel tall;  // (their panels come from memory: one pass over them for all rows); the same bits as tile
    bool tall_for(int64_t M) const { return M > mr && M <= tall_mr; }
    // Products of many rows on tile hardware (the amx sets: AMX-INT8 tiles; nullptr elsewhere): up to tiles_mr rows
    // by one nr-column panel, the same bits as tile. gemm_int8 takes it for products of at least tiles_mr rows.
    Int8Kernel tiles = nullptr;
    int tiles_mr = 0;
    bool tiles_for(int64_t M) const { return tiles != nullptr && M >= tiles_mr; }
    // The kernel for a product of M rows, and its rows per call.
    Int8Kernel kernel_for(int64_t M) const { return tiles_for(M) ? tiles : tall_for(M) ? tall : tile; }
    int mr_for(int64_t M) const { return tiles_for(M) ? tiles_mr : tall_for(M) ? tall_mr : mr; }
    bool int8_a() const { return kgroup == 4; }
    // Per row i < m of a (k floats, row stride lda) and block b < nb = ceil(k / kQBlock): amax = max |a[i][p]| over
    // the block; scale[i][b] = amax / 127 and q[i][p] = rint(a[i][p] * (127 / amax)) (p < k; 0 for p in [k, kp)).
    // A block whose amax is 0 or below 2^-100 (where 127 / amax would overflow) gets scale 0 and zeros; a block
    // holding NaN or inf gets scale NaN (its row's outputs are NaN) and zeros.
    void (*quantize)(const float* a, int64_t lda, int64_t m, int64_t k, int16_t* q, int64_t ldq, float* scale,
                     int64_t lds);
    // The same values as int8, with each block's sum sum[i][b] (row stride lds, as scale).
    void (*quantize8)(const float* a, int64_t lda, int64_t m, int64_t k, int8_t* q, int64_t ldq, float* scale,
                      int32_t* sum, int64_t lds);
};

// ---- 4- and 5-bit blocks (GGUF's Q4_0, Q4_1, Q5_0 and Q5_1), read without widening in memory ----
// B: per column j and block b of kQBlock k, unsigned u in [0, 15] (4-bit) or [0, 31] (5-bit), an IEEE-half scale d
// and, for Q4_1 / Q5_1, an IEEE-half minimum m:
//   W[k][j] = d (u - 8)  (Q4_0),   d (u - 16)  (Q5_0)   or   d u + m  (Q4_1, Q5_1).
// A: int8 in [-127, 127] per (row, block) by Int8Kernels::quantize's rule, with the block's scale sa and the block's
// integer sum t = sum_k Aq[i][k] (row stride ldsa for both).
// A panel holds kQ4Cols columns. Per block (q4_block_bytes), 128 bytes of nibbles, then 8 halves d, then (Q4_1) 8
// halves m: byte 32 c + 4 j + s (chunk c < 4, column j < 8, s < 4) holds u[4c + s][j] in its low nibble and
// u[16 + 4c + s][j] in its high nibble -- for each column, GGUF's own 16 bytes in four groups of 4, so that one
// 32-byte load gives 8 columns x 4 k of low nibbles and 8 x 4 of high ones (pmaddubsw: u8 x s8 pairs, at most
// 2 * 15 * 127 per pair and 16 * 15 * 127 = 30480 per int16 lane over a block: never saturated). 5-bit blocks hold
// u's low 4 bits so, then 32 bytes of fifth bits before the halves: bit 2 c + h of byte 4 j + s is u[16 h + 4 c +
// s][j]'s (q4_fifth_field), so that one shift and one and of those 32 bytes put chunk c's fifth bits at bit 4, over its
// nibbles (x86_fields.inl).
//   Q4_0: s_{b+1} = fma(float(sum_k Aq[i][k] u[k][j] - 8 t), sa d, s_b)          (= the int8 GEMM of d (u - 8))
//   Q5_0: the same with 16 t
//   Q4_1, Q5_1: s_{b+1} = fma(float(sum_k Aq[i][k] u[k][j]), sa d, fma(m, sa float(t), s_b))
// with s_0 = 0, products sa d and sa float(t) rounded to float; c[i][j] = s_nb (+ bias[j], one add). Every kernel
// set computes these operations in this order: the same bits everywhere (tested).
// 6-bit blocks (q6_k: GGUF's Q6_K, its sub-blocks of 16 two to a block of 32): u in [0, 63], a half d and two int8
// sub-scales, sc_0 for k < 16 and sc_1 for k >= 16: W[k][j] = d sc_h (u - 32). The panel block holds the 4-bit
// layout's nibbles, then u's top two bits in two 32-byte vectors: chunk c's (low nibbles: h = 0, high: h = 1) in vector
// c / 2 (q6_high_bits) at bits 2 f, 2 f + 1 of byte 4 j + s, f = 2 (c % 2) + h (q6_high_field) -- one shift and one
// and put them at bits 4-5 of 32 bytes, over the nibbles -- then 8 halves d, then the 8 columns' sc_0 and their 8 sc_1
// (int8). With t_h = sum over the half's k of Aq[i][k] (given packed in the block's
// ta: t_0 in the low 16 bits, t_1 in the high 16) and I_h = sum over the half's k of Aq[i][k] u[k][j]:
//   Q6_K: s_{b+1} = fma(float(sc_0 (I_0 - 32 t_0) + sc_1 (I_1 - 32 t_1)), sa d, s_b)   (int32: at most 2^24 in size)
// K-quant super-blocks (q4_k, q5_k: GGUF's Q4_K and Q5_K, read as stored up to the order of their bytes): per column
// and super-block of kQKSuper blocks (256 k), a half scale d and a half minimum dmin, and per block a 6-bit scale sc
// and a 6-bit minimum m: W[k][j] = d sc u - dmin m, u 4- or 5-bit. The panel holds, per super-block (q4k_super_bytes),
// its blocks' values in the 4- or 5-bit layout above (q4_halves(five) bytes each: nibbles, fifth bits), then per block
// the 8 columns' sc and their 8 m (uint8), then 8 halves d and 8 halves dmin: 0.578 bytes per weight for q4_k
// (GGUF's 0.5625, with the sub-scales as bytes rather than 6-bit fields), 0.703 for q5_k. ds = d sc and dm = dmin m
// are exact in float32 (11 + 6 bits), and each block takes Q4_1's step with d = ds and m = -dm:
//   Q4_K, Q5_K: s_{b+1} = fma(float(sum_k Aq[i][k] u[k][j]), sa ds, fma(-dm, sa float(t), s_b))
// Low-bit K-quant super-blocks (q2_k, q3_k: GGUF's Q2_K and Q3_K): u of 2 or 3 bits, per column and super-block a half
// scale d (and, Q2_K, a half minimum dmin), per half-block of 16 a sub-scale sc_h (Q2_K: 4-bit, with a 4-bit minimum
// m_h; Q3_K: int8 in [-32, 31]): W[k][j] = d sc_h u - dmin m_h (Q2_K), d sc_h (u - 4) (Q3_K). The panel holds, per
// super-block (q2k_super_bytes), its 8 blocks' values (q2k_block_bytes each): 64 bytes, byte 32 h + 4 j + s holding
// u[16 h + 4 f + s][j]'s low two bits at bits 2 f (f < 4: one 32-byte load and a shift give 8 columns x 4 k of a
// half), then (Q3_K) their third bits in 32 bytes, bit 4 h + f of byte 4 j + s (q2k_third_field); then per block 16
// bytes of sub-scales (half 0's 8 columns, then half 1's; Q2_K: sc_h | m_h << 4, Q3_K: int8 sc_h); then 8 halves d
// (and 8 dmin): 0.328 bytes per weight for q2_k (GGUF's own), 0.445 for q3_k (GGUF's 0.430). With I_h and t_h as for
// Q6_K:
//   Q3_K: s_{b+1} = fma(float(sc_0 (I_0 - 4 t_0) + sc_1 (I_1 - 4 t_1)), sa d, s_b)
//   Q2_K: s_{b+1} = fma(float(sc_0 I_0 + sc_1 I_1), sa d, fma(-float(m_0 t_0 + m_1 t_1), sa dmin, s_b))
constexpr int kQ4Cols = 8;

// How far ahead (bytes) the block kernels (int8, 4-bit) prefetch the weight panels they stream: a decoding step is a
// GEMV whose weights come from DRAM, and with the hardware prefetcher alone one Zen 3 core read SmolLM2's q4_1
// layers at 6.0-6.3 GB/s against 10-11 GB/s for a plain sum. benchmarks/gym/prefetch.py, helpers stopped, 1 thread:
// layers 10.6-11.0 ms without, 7.9-8.8 ms at 2-8 KiB ahead; the int8 head 4.0-4.1 -> 3.5-3.7 ms; 2 threads 6.5-7.2
// -> 5.7-6.2 and 2.4-3.0 -> 2.3-2.6 ms (a plateau from 2 to 16 KiB). 0 turns it off (_core._tune_prefetch).
// The kernels take the distance as their last argument (`ahead`): the drivers pass stream_prefetch_bytes to the first
// row tile of a panel, which reads the panel from memory, and 0 to the others, which find it in cache (prefetching
// there cost 5-15% at M = 512, 1 thread).
extern int64_t stream_prefetch_bytes;
// A panel block's bytes, and the offsets of its parts: the 32-bit fifth-bit mask of chunk ch's low (high = 0) or high
// (high = 1) nibbles (5-bit only), and the halves (after the nibbles and, 5-bit, the fifth bits).
constexpr int q4_fifth_bits() { return 16 * kQ4Cols; }
constexpr int q4_fifth_field(int ch, int high) { return 2 * ch + high; }
constexpr int q4_halves(bool five) { return 16 * kQ4Cols + (five ? 4 * kQ4Cols : 0); }
constexpr int q4_block_bytes(bool has_min, bool five = false) { return q4_halves(five) + (has_min ? 4 : 2) * kQ4Cols; }
// The index of a block type's kernels in Q4Kernels::tile and wide: Q4_0, Q4_1, Q5_0, Q5_1, then Q6_K (kQ6Kind).
constexpr int q4_kind(bool has_min, bool five) { return (has_min ? 1 : 0) + (five ? 2 : 0); }
constexpr int kQ6Kind = 4;  // (q4k_kind: Q4_K 5, Q5_K 6)
// A 6-bit panel block's vector of the top two bits of chunk ch, their field for the chunk's low (high = 0) or high
// nibbles, its halves d, its sub-scales sc_h (8 int8 each), its size.
constexpr int q6_high_bits(int ch) { return 16 * kQ4Cols + 32 * (ch / 2); }
constexpr int q6_high_field(int ch, int high) { return 2 * (ch % 2) + high; }
constexpr int q6_halves() { return 16 * kQ4Cols + 8 * kQ4Cols; }
constexpr int q6_scales(int high) { return q6_halves() + 2 * kQ4Cols + high * kQ4Cols; }
constexpr int q6_block_bytes() { return q6_scales(1) + kQ4Cols; }
// A K-quant super-block of the panel: its blocks of 32, the offsets of block b's values, of its sub-scales sc (m at
// + kQ4Cols) and of the halves d (dmin at + 2 kQ4Cols), its size; the index of its kernels in Q4Kernels.
constexpr int kQKSuper = 8;
constexpr int q4k_values(bool five, int b) { return b * q4_halves(five); }
constexpr int q4k_scales(bool five, int b) { return kQKSuper * q4_halves(five) + 2 * kQ4Cols * b; }
constexpr int q4k_halves(bool five) { return q4k_scales(five, kQKSuper); }
constexpr int q4k_super_bytes(bool five) { return q4k_halves(five) + 4 * kQ4Cols; }
constexpr int q4k_kind(bool five) { return 5 + (five ? 1 : 0); }
// A low-bit super-block (q2_k, q3_k): a block's bytes of values, block b's values, its third bits and their field for
// (half h, field f), block b's sub-scales (half h's at + kQ4Cols h), the halves d (dmin at + kQ4Cols), the
// super-block's size, the kind.
constexpr int q2k_block_bytes(bool three) { return 64 + (three ? 32 : 0); }
constexpr int q2k_values(bool three, int b) { return b * q2k_block_bytes(three); }
constexpr int q2k_third_bits() { return 64; }
constexpr int q2k_third_field(int h, int f) { return 4 * h + f; }
constexpr int q2k_scales(bool three, int b) { return kQKSuper * q2k_block_bytes(three) + 2 * kQ4Cols * b; }
constexpr int q2k_halves(bool three) { return q2k_scales(three, kQKSuper); }
constexpr int q2k_super_bytes(bool three) { return q2k_halves(three) + (three ? 2 : 4) * kQ4Cols; }
constexpr int q2k_kind(bool three) { return 7 + (three ? 1 : 0); }
constexpr int kQ4Kinds = 9;
// Two signed numbers of at most 16 bits in one int32, lo in the low half and hi in the high half: the 6-bit kernels'
// half sums of A (ta) and the wide tile's sub-scales.
constexpr int32_t pack16(int32_t lo, int32_t hi) {
    return static_cast<int32_t>((static_cast<uint32_t>(lo) & 0xFFFFu) | (static_cast<uint32_t>(hi) << 16));
}
constexpr int32_t low16(int32_t packed) { return static_cast<int16_t>(static_cast<uint32_t>(packed) & 0xFFFFu); }
constexpr int32_t high16(int32_t packed) { return static_cast<int16_t>(static_cast<uint32_t>(packed) >> 16); }
// Value u[k][j] of a low-bit block (q2k_values, 2 or 3 bits).
inline int low_value(const uint8_t* blk, int j, int k, int bits) {
    const int h = k / 16, f = k % 16 / 4, bit = 4 * j + k % 4;
    int u = (blk[32 * h + bit] >> (2 * f)) & 3;
    if (bits == 3) u |= ((blk[q2k_third_bits() + bit] >> q2k_third_field(h, f)) & 1) << 2;
    return u;
}
// Value u[k][j] (k < kQBlock, j < kQ4Cols) of a panel block of `bits` bits (4, 5 or 6): its nibble, and its fifth bit
// (5-bit) or its top two bits (6-bit) from their fields -- the layouts above read one value at a time
// (the scalar kernels, unpacking).
inline int block_value(const uint8_t* blk, int j, int k, int bits) {
    const int kk = k % 16, high = k / 16, ch = kk / 4, bit = 4 * j + kk % 4;
    const uint8_t byte = blk[32 * ch + bit];
    int u = high ? byte >> 4 : byte & 15;
    if (bits == 5) u |= ((blk[q4_fifth_bits() + bit] >> q4_fifth_field(ch, high)) & 1) << 4;
    if (bits == 6) u |= ((blk[q6_high_bits(ch) + bit] >> (2 * q6_high_field(ch, high))) & 3) << 4;
    return u;
}

using Q4Kernel = void (*)(int64_t m, int64_t nb, const int8_t* a, int64_t lda, const float* sa, const int32_t* ta,
                          int64_t ldsa, const uint8_t* b, float* c, int64_t ldc, const float* bias, int64_t ahead);

// The wide tile (optional; null where the set has none): for products of many rows (a prompt's prefill), where the
// panels are read from cache once per row tile, not from memory. The driver unpacks kQ4Wide / kQ4Cols panels into one
// wide panel per block of rows: per block (kQ4WideBlockBytes), the nibbles as bytes, 4 consecutive k of a column in
// 4 bytes (byte (g kQ4Wide + j) 4 + t = u[4 g + t][j], g < kQBlock / 4), then kQ4Wide floats d, then kQ4Wide floats
// m (Q4_1 / Q5_1; zeros otherwise; Q6_K and Q3_K: each column's sc_0 and sc_1 as int16 in the low and high halves of
// an int32; Q4_K / Q5_K: ds and -dm, so that Q4_1's wide tile computes their step; Q2_K: d and dmin as halves in d's
// place, d in the low 16 bits, and sc_0, sc_1, m_0, m_1 as the four bytes, low first, of m's int32). The float steps
// are the formulas above, in their order: the same bits as tile.
constexpr int kQ4Wide = 32;
constexpr int64_t kQ4WideBlockBytes = kQBlock * kQ4Wide + 2 * kQ4Wide * 4;
using Q4WideKernel = void (*)(int64_t m, int64_t nb, const int8_t* a, int64_t lda, const float* sa, const int32_t* ta,
                              int64_t ldsa, const uint8_t* b, float* c, int64_t ldc, const float* bias);

// The wide panel's share of one matrix panel (its nb blocks at src): panel p < kQ4Wide / kQ4Cols of the wide panel at
// dst (nb blocks of kQ4WideBlockBytes).
using Q4UnpackKernel = void (*)(const uint8_t* src, int64_t nb, int p, uint8_t* dst);

struct Q4Kernels {
    int mr;                             // up to mr rows of A by one kQ4Cols-column panel per call
    Q4Kernel tile[kQ4Kinds];            // by kind: Q4_0, Q4_1, Q5_0, Q5_1, Q6_K, Q4_K, Q5_K, Q2_K, Q3_K; 1 <= m <= mr
    Q4WideKernel wide[kQ4Kinds]{};      // the wide tile by kind: up to wide_mr[kind] rows by kQ4Wide columns, on
    int wide_mr[kQ4Kinds]{};            // ... panels unpacked by
    Q4UnpackKernel unpack[kQ4Kinds]{};  // ... (by kind)
};

// ---- bfloat16 pairs (AVX512_BF16's vdpbf16ps) ----
// The blocked GEMM of bfloat16 weights on a CPU that multiplies bfloat16 pairs (gemm.cpp's run_blocked_bf16): A's
// MR-row panel and B's NR-column panel hold pairs of consecutive k in one uint32 (k = 2p in the low half, 2p + 1 in
// the high half; an odd kc ends in a pair whose high halves are 0):  a[p * MR + i] = pair p of row i,
// b[p * NR + j] = pair p of column j.  micro: C (MR x NR) = sum_p a_p . b_p (+ beta C), each pair's two products
// (exact: 8-bit significands) added to the lane's float sum by vdpbf16ps, round to nearest even, denormals flushed:
// the same quantity as the widening path (bfloat16 A times bfloat16 B), summed in a different order.
// rows: the small-M kernel on the packed bfloat16 panel as it is stored (b[p * ldb + j], 16 bits), its rows p and
// p + 1 interleaved into pairs in registers: C (m x 32) = A B (+ beta C) for m <= rows_max rows of A given as pairs
// (row i's pair q at a[i * lda + q]); k consecutive k of the panel (an odd k ends in a half-empty pair).
// pack: m rows of k floats (row stride lda) rounded to bfloat16 and stored as pairs, row i's pair q at
// dst[i * ldd + q * step]; an odd k ends in (x, 0). Either row-major (step 1) or an A panel (ldd 1, step = MR,
// m <= 16). Denormal floats may become zero (vcvtne2ps2bf16), as the pair instructions read them.
// tiles (AMX sets only, else null): C (m x n) = A B (+ beta C) on 16 x 16 tiles for the blocked GEMM. pairs is a
// multiple of 16 (the driver pads A's rows and B's panels with zero pairs); A row-major pairs, row i's pair p at
// a[i * lda + p], with its rows readable up to m rounded up to 32; B the micro's panels of 32 columns (pair p of
// column j at b[p * 32 + j]), panel q at b + q * 32 * pairs.
struct Bf16PairKernels {
    void (*micro)(int64_t pairs, const uint32_t* a, const uint32_t* b, float* c, int64_t ldc, float beta);
    void (*rows)(int64_t m, int64_t k, const uint32_t* a, int64_t lda, const uint16_t* b, int64_t ldb, float* c,
                 int64_t ldc, float beta);
    int rows_max;
    void (*pack)(const float* a, int64_t lda, int64_t m, int64_t k, uint32_t* dst, int64_t ldd, int64_t step);
    void (*tiles)(int64_t m, int64_t n, int64_t pairs, const uint32_t* a, int64_t lda, const uint32_t* b, float* c,
                  int64_t ldc, float beta);
};

struct KernelSet {
    const char* name;
    GemmBlocking blocking;
    MicroKernel micro;
    RowsKernel rows;
    // The rows kernel for up to tall_rows (> MR where the register file allows) rows and tall_cols columns:
    // a few more rows than MR (a 13-token sentence) in ONE pass over B, all rows in registers at once.
    RowsKernel tall;
    int tall_rows, tall_cols;
    DotKernel dot;
    // Decoding attention over a KV cache read in place (rows of stride ld), for m query rows (the query heads of a
    // grouped-query group, which share the keys and values; row r at q + r ldq, s + r lds, p + r ldp, o + r ldo):
    // s_r[j] = q_r . k_j for j < n (d floats each), and o_r[0, dv) = sum_{j < n} p_r[j] v_j.
    void (*attn_scores)(int64_t m, const float* q, int64_t ldq, const float* k, int64_t ldk, int64_t n, int64_t d,
                        float* s, int64_t lds);
    void (*attn_values)(int64_t m, const float* p, int64_t ldp, int64_t n, const float* v, int64_t ldv, int64_t dv,
                        float* o, int64_t ldo);
    // The same over a float16 cache (each element widened as it is loaded).
    void (*attn_scores_f16)(int64_t m, const float* q, int64_t ldq, const uint16_t* k, int64_t ldk, int64_t n,
                            int64_t d, float* s, int64_t lds);
    void (*attn_values_f16)(int64_t m, const float* p, int64_t ldp, int64_t n, const uint16_t* v, int64_t ldv,
                            int64_t dv, float* o, int64_t ldo);
    // y = float16(x), round to nearest even (F16C's conversion and float_to_half alike); overflow gives inf
    void (*narrow_f16)(const float* x, uint16_t* y, int64_t n);
    PackTransKernel pack_bt;
    // Packs rows [0, mc) x cols [0, kc) of A (row stride lda), times scale, into MR-row panels: element (i, p) of
    // panel r at dst[r * kc * mr + p * mr + i]; rows past mc are zero-filled up to a whole panel.
    void (*pack_a)(const float* a, int64_t lda, int64_t mc, int64_t kc, int mr, float* dst, float scale);
    // 16-bit B panels, indexed by HalfFormat.
    HalfKernels half[2];
    // y = float(bfloat16(x)), round to nearest even; NaN stays NaN; y may alias x
    void (*round_bf16)(const float* x, float* y, int64_t n);
    Int8Kernels i8;
    Q4Kernels q4;
    Bf16PairKernels bf16pairs;  // null where the CPU has no bfloat16 pair instructions

    // ---- row primitives (length n) ----
    float (*max)(const float* x, int64_t n);  // -inf for n == 0
    // y = exp(x - shift); returns sum(y); y may alias x
    float (*exp_sum)(const float* x, float* y, int64_t n, float shift);
    void (*scale)(float* x, int64_t n, float s);                       // x *= s
    void (*softcap)(float* x, int64_t n, float cap);                   // x = cap tanh(x / cap) (Gemma 2's scores)
    void (*add_scalar)(const float* x, float* y, int64_t n, float s);  // y = x + s; y may alias x
    void (*axpy)(float* y, const float* x, int64_t n, float a);        // y += a * x
    void (*mask_bool)(float* s, const uint8_t* masked, int64_t n);     // s[j] = -inf where masked[j] != 0
    void (*add)(float* s, const float* t, int64_t n);                  // s += t
    // y = (x - mean) / sqrt(var + eps) * w + b  (w, b may be null: 1 and 0); y may alias x
    void (*layer_norm)(const float* x, float* y, const float* w, const float* b, int64_t n, float eps);
    // y = x / sqrt(mean(x^2) + eps) * w  (w may be null: 1); y may alias x
    void (*rms_norm)(const float* x, float* y, const float* w, int64_t n, float eps);
    // y = act(g) * u over n floats (a gated FFN's gate times up: silu for SwiGLU, gelu_tanh for GeGLU); y may alias g
    // or u
    void (*gate_mul)(const float* g, const float* u, float* y, int64_t n, Activation act);
    // Rotation of n pairs (a[i], b[i]) by the angles whose cos and sin are c[i], s[i]:
    //   a' = a c - b s,  b' = a s + b c  (in place; a and b do not overlap)
    void (*rotate)(float* a, float* b, const float* c, const float* s, int64_t n);
    // y = act(x + bias) where bias may be null; y may alias x
    void (*bias_act)(const float* x, float* y, const float* bias, int64_t n, Activation act);
    // One GRU step for one row, PyTorch's gate order (r, z, n): gi and gh hold [r | z | n] (3n floats each: the
    // input and hidden projections, biases included). r = sigmoid(gi_r + gh_r), z = sigmoid(gi_z + gh_z),
    // c = tanh(gi_n + r * gh_n), h = (1 - z) c + z h, in place.
    void (*gru_gates)(const float* gi, const float* gh, float* h, int64_t n);
    // Additive (Bahdanau) attention scores of one query against m keys:
    //   out[j] = sum_h v[h] * tanh(a[h] + b[j * ldb + h]),  h < n, j < m.
    // a: the projected query (n), b: m projected keys (row stride ldb), v: (n). out[j] is NaN when any
    // a[h] + b[j * ldb + h] is NaN or infinite (every kernel set alike), so that bad inputs are never
    // silently saturated by tanh.
    void (*tanh_dot)(const float* a, const float* b, int64_t ldb, int64_t m, const float* v, int64_t n, float* out);

    // Measures the FMA throughput of one core: runs `iters` iterations of independent FMA chains and
    // returns the number of floating-point operations performed.
    double (*fma_loop)(int64_t iters);
    // Sum of n floats streamed from memory (used to measure read bandwidth).
    float (*stream_sum)(const float* x, int64_t n);
};

// Non-const only so that cpu::tune_blocking (benchmarks/gym) can try other block sizes.
KernelSet& scalar_kernel_set();
Int8Kernels scalar_int8_kernels();
Q4Kernels scalar_q4_kernels();
#if defined(PYATTN_HAVE_X86_KERNELS)
Q4Kernels avx2_q4_kernels();
KernelSet& avx2_kernel_set();
KernelSet& avx512_kernel_set();
Int8Kernels avx2_int8_kernels();
KernelSet& avx512_vnni_kernel_set();
KernelSet& avx512_bf16_kernel_set();
#if defined(PYATTN_HAVE_AMX_KERNELS)
KernelSet& amx_kernel_set();
#endif
KernelSet& amx_emulated_kernel_set();
#if defined(PYATTN_HAVE_AVX_VNNI_KERNELS)
KernelSet& avx_vnni_kernel_set();
#endif
KernelSet& avx_vnni_evex_kernel_set();
#endif

}  // namespace pyattn::kernels

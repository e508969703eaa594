// Weight types: how a packed weight matrix holds its elements. One row per type in kWeightTypes; the GEMM picks
// its path from the type's family, the kernel set supplies the (type, ISA) kernels.
//
//   family   types              arithmetic
//   float    float32            float32 products and sums
//   wide16   float16, bfloat16  16-bit elements widened to float32 in registers; bfloat16 also rounds the
//                               activations to bfloat16 as they are read, so that every kernel set computes
//                               the products of bfloat16 numbers (exact in float32) summed in float32
//   int8     int8               symmetric per-output-channel scales; activations quantized per row (token) to
//                               [-127, 127] at the GEMM's input; int32 sums, dequantized in the epilogue
//   block    q4_0, q4_1,        GGUF's 4- and 5-bit blocks of 32 along K with a half scale (and, q4_1 / q5_1, a
//            q5_0, q5_1,        half minimum), read as stored; q6_k: GGUF's Q6_K values (6 bits, a half scale per
//            q6_k,              256, an int8 one per 16) in blocks of 32; q4_k / q5_k: GGUF's Q4_K / Q5_K (half
//            q4_k, q5_k,        scale and minimum per 256, 6-bit ones per 32); q2_k / q3_k: GGUF's Q2_K / Q3_K (2-
//            q2_k, q3_k         and 3-bit values, half scale (and minimum) per 256, 4- or 6-bit ones per 16);
//                               activations quantized per block of 32 to int8 (kernels.h: Q4Kernels)
//
// GGUF's Q8_0 is the int8 type with one scale per block.
#pragma once
#include <cstdint>
#include <string>

namespace pyattn::gemm {

enum class WeightType : uint8_t {
    f32 = 0,
    f16 = 1,
    bf16 = 2,
    i8 = 3,
    q4_0 = 4,
    q4_1 = 5,
    q5_0 = 6,
    q5_1 = 7,
    q6_k = 8,
    q4_k = 9,
    q5_k = 10,
    q2_k = 11,
    q3_k = 12
};
enum class WeightFamily : uint8_t { float32, wide16, int8, block };

struct WeightTypeInfo {
    WeightType type;
    const char* name;  // the name in the Python API (numpy / torch spelling)
    int bits;          // per element, scales not counted
    WeightFamily family;
    bool exact;  // every float32 is held exactly (no rounding when packing)
};

inline constexpr WeightTypeInfo kWeightTypes[] = {
    {WeightType::f32, "float32", 32, WeightFamily::float32, true},
    {WeightType::f16, "float16", 16, WeightFamily::wide16, false},
    {WeightType::bf16, "bfloat16", 16, WeightFamily::wide16, false},
    {WeightType::i8, "int8", 8, WeightFamily::int8, false},
    {WeightType::q4_0, "q4_0", 4, WeightFamily::block, false},
    {WeightType::q4_1, "q4_1", 4, WeightFamily::block, false},
    {WeightType::q5_0, "q5_0", 5, WeightFamily::block, false},
    {WeightType::q5_1, "q5_1", 5, WeightFamily::block, false},
    {WeightType::q6_k, "q6_k", 6, WeightFamily::block, false},
    {WeightType::q4_k, "q4_k", 4, WeightFamily::block, false},
    {WeightType::q5_k, "q5_k", 5, WeightFamily::block, false},
    {WeightType::q2_k, "q2_k", 2, WeightFamily::block, false},
    {WeightType::q3_k, "q3_k", 3, WeightFamily::block, false},
};

inline constexpr const WeightTypeInfo& info(WeightType t) { return kWeightTypes[static_cast<int>(t)]; }

// Bytes of one GGUF block (32 weights) of a block type: Q4_0 18, Q4_1 20, Q5_0 22, Q5_1 24; q6_k 28, a block of 32 of
// Q6_K's values as pyattn takes them (PackedMatrix: half d, two int8 sub-scales, fifth and sixth bits, nibbles);
// q4_k, q5_k, q2_k and q3_k are read per super-block of 256 weights (kSuperBlock), GGUF's 144, 176, 84 and 110 bytes.
inline constexpr int kSuperBlock = 256;
inline constexpr bool low_bits(WeightType t) { return t == WeightType::q2_k || t == WeightType::q3_k; }
inline constexpr bool super_blocks(WeightType t) {
    return t == WeightType::q4_k || t == WeightType::q5_k || low_bits(t);
}
inline constexpr int gguf_super_bytes(WeightType t) {
    return t == WeightType::q4_k ? 144 : t == WeightType::q5_k ? 176 : t == WeightType::q2_k ? 84 : 110;
}
inline constexpr int gguf_block_bytes(WeightType t) {
    if (t == WeightType::q6_k) return 28;
    return 18 + (t == WeightType::q4_1 || t == WeightType::q5_1 ? 2 : 0) +
           (t == WeightType::q5_0 || t == WeightType::q5_1 ? 4 : 0);
}

// Bytes of a row of K weights of a block type as GGUF (or, q6_k, pyattn.io.gguf) lays them out; K a multiple of 32 (of
// kSuperBlock for the K-quant types).
inline constexpr int64_t gguf_row_bytes(WeightType t, int64_t K) {
    return super_blocks(t) ? K / kSuperBlock * gguf_super_bytes(t) : K / 32 * gguf_block_bytes(t);
}

// Whether an encoder with weights of type t may run its attention's products (Q K^T, P V) in bfloat16
// (ops::AttentionArgs::bf16): its weights are bfloat16 or round more coarsely than bfloat16 does (int8, 4-bit), so
// that bfloat16 products add little to its error (MiniLM int8: the same min cosine to float32, 0.999564 on 300
// sentences). float32 and float16 keep float32 attention; so do decoder-only int8 / 4-bit models (decoder_layer.cpp).
inline constexpr bool bf16_attention(WeightType t) { return t == WeightType::bf16 || info(t).bits < 16; }

// The type named `name`; throws std::invalid_argument listing the names otherwise.
WeightType parse_weight_type(const std::string& name);
// "float32, float16, bfloat16, int8, q4_0, q4_1, q5_0, q5_1, q6_k, q4_k, q5_k, q2_k, q3_k"; blocks_only: "q4_0, ...".
std::string weight_type_names(bool blocks_only = false);

}  // namespace pyattn::gemm

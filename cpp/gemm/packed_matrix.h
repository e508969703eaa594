// A K x N GEMM B operand packed once (at weight-load time) into the panel layout of one kernel set,
// so that each later call packs only its activations.
//
// Layout of float32 and 16-bit types: blocks (jc, pc) of KC x NC, stored jc-major; inside a block, ceil(nc / NR)
// panels of kc x NR elements, each row of a panel contiguous; the last panel is zero-padded to NR columns.
// int8: see panel_i8 (no K or N blocking: each output sums all of K in int32 before it is dequantized).
// 4-, 5- and 6-bit blocks (q4_0 ... q6_k, q4_k, q5_k): see panel_q4 (the same, panels of kernels::kQ4Cols columns).
#pragma once
#include <cstdint>
#include <vector>

#include "cpu/buffer.h"
#include "gemm/weight_type.h"
#include "kernels/kernels.h"

namespace pyattn::gemm {

// Where k = p of column jj sits in an int8 panel of nr columns grouping kgroup consecutive k (Int8Kernels, kernels.h)
inline int64_t int8_offset(int64_t p, int64_t jj, int64_t nr, int kgroup) {
    return ((p / kgroup) * nr + jj) * kgroup + p % kgroup;
}

class PackedMatrix {
public:
    // Packs B (element (p, j) = b[p * ldb + j], or b[j * ldb + p] when trans) as float32 for kernel set `ks`.
    PackedMatrix(const float* b, int64_t ldb, bool trans, int64_t K, int64_t N, const kernels::KernelSet& ks);
    // Packs a weight W given as N x K ([out, in], row stride ldw) as `type` (weight_type.h), from floats (w32) or
    // from IEEE halves (w16; the other pointer null). 16-bit types round to nearest even (halves stay as they are
    // for float16); int8 quantizes each row (output channel) in blocks of kQBlock along K by the rules of
    // Int8Kernels::quantize (scale = the block's max |W| / 127; a block holding NaN or inf gets a NaN scale).
    PackedMatrix(gemm::WeightType type, const float* w32, const uint16_t* w16, int64_t ldw, int64_t K, int64_t N,
                 const kernels::KernelSet& ks);

    // An int8 weight quantized elsewhere: q (N x K, row stride ldq) with w[j][p] ~ q[j][p] * scale, the scales one
    // per row (nscales == 1: CTranslate2's int8) or one per block of kQBlock along K (nscales == ceil(K / kQBlock):
    // GGUF's Q8_0), row stride nscales. Held as given: no value is quantized again.
    PackedMatrix(const int8_t* q, int64_t ldq, const float* scales, int64_t nscales, int64_t K, int64_t N,
                 const kernels::KernelSet& ks);

    // A 4- or 5-bit weight as GGUF stores it (type q4_0, q4_1, q5_0 or q5_1): N rows of K / kQBlock blocks of
    // gguf_block_bytes(type) -- Q4_0: half d, 16 bytes of nibbles; Q4_1: half d, half m, nibbles; Q5_0: half d, 4 bytes
    // of fifth bits (bit k of weight k), nibbles; Q5_1: half d, half m, fifth bits, nibbles -- rows contiguous. Held
    // as given. q6_k: half d, int8 sc_0 (weights 0-15), int8 sc_1 (16-31), fifth bits, sixth bits (4 bytes each,
    // bit k of weight k), nibbles (u = the 6-bit value, w = d sc (u - 32); pyattn.io.gguf re-lays GGUF's Q6_K so).
    // q4_k, q5_k, q2_k, q3_k: GGUF's Q4_K, Q5_K, Q2_K and Q3_K super-blocks (K / 256 per row, 144, 176, 84 and 110
    // bytes).
    PackedMatrix(gemm::WeightType type, const uint8_t* raw, int64_t K, int64_t N, const kernels::KernelSet& ks);

    int64_t K() const { return K_; }
    int64_t N() const { return N_; }
    WeightType type() const { return type_; }
    const kernels::KernelSet& kernels() const { return *ks_; }
    const kernels::GemmBlocking& blocking() const { return ks_->blocking; }
    // float32 and 16-bit types: start of block (jc, pc); jc and pc are multiples of NC and KC.
    const float* block(int64_t jc, int64_t pc) const;
    const uint16_t* block16(int64_t jc, int64_t pc) const;
    kernels::HalfFormat half_format() const {
        return type_ == WeightType::bf16 ? kernels::HalfFormat::bf16 : kernels::HalfFormat::f16;
    }
    // int8: panels of ks.i8.nr columns over K padded to nblocks() * kQBlock (the layout of Int8Kernel's b), and
    // per panel its nblocks() x nr block scales (zero for the padding columns).
    int64_t nblocks() const { return (K_ + kernels::kQBlock - 1) / kernels::kQBlock; }
    const int8_t* panel_i8(int64_t q) const {
        return reinterpret_cast<const int8_t*>(data_.get()) + q * nblocks() * kernels::kQBlock * ks_->i8.nr;
    }
    const float* panel_scales(int64_t q) const { return scales_.get() + q * nblocks() * ks_->i8.nr; }
    // 4- and 5-bit blocks: panels of kQ4Cols columns, nblocks() blocks of q4_block_bytes each (kernels.h: Q4Kernels;
    // K-quant super-blocks: nblocks() / kQKSuper of q4k_super_bytes, q4_block_bytes on average).
    bool super_blocks() const { return gemm::super_blocks(type_); }
    bool low_bits() const { return gemm::low_bits(type_); }  // q2_k, q3_k
    bool has_min() const { return type_ == WeightType::q4_1 || type_ == WeightType::q5_1 || super_blocks(); }
    bool three() const { return info(type_).bits == 3; }
    bool five() const { return info(type_).bits == 5; }
    bool six() const { return info(type_).bits == 6; }
    // The kernels take A's block sums per half of 16 (kernels.h: Q6_K, Q2_K, Q3_K).
    bool half_sums() const { return six() || low_bits(); }
    int q4_kind() const {
        if (low_bits()) return kernels::q2k_kind(three());
        if (super_blocks()) return kernels::q4k_kind(five());
        return six() ? kernels::kQ6Kind : kernels::q4_kind(has_min(), five());
    }
    int64_t q4_block_bytes() const {
        if (low_bits()) return kernels::q2k_super_bytes(three()) / kernels::kQKSuper;
        if (super_blocks()) return kernels::q4k_super_bytes(five()) / kernels::kQKSuper;
        return six() ? kernels::q6_block_bytes() : kernels::q4_block_bytes(has_min(), five());
    }
    const uint8_t* panel_q4(int64_t q) const {
        return reinterpret_cast<const uint8_t*>(data_.get()) + q * nblocks() * q4_block_bytes();
    }
    // int8 only: a per-input-channel scale a (K positive finite floats) the activations are multiplied by before they
    // are quantized: the GEMM computes (A diag(a)) Bq, so a weight packed as W / a (per input channel) gives A W^T
    // with the outlier channels of A shrunk to the range of the others (SmoothQuant's migration of the activations'
    // range into the weights). The weight as unpacked is the stored one times a. Unset: none (nullptr).
    void set_input_scale(const float* a);
    // std::invalid_argument naming the first of a[0, K) that is not positive and finite.
    static void check_input_scale(const float* a, int64_t K);
    const float* input_scale() const { return in_scale_.empty() ? nullptr : in_scale_.data(); }
    std::size_t size_bytes() const { return bytes_ + in_scale_.size() * sizeof(float); }
    // Writes the matrix back in the transposed [N, K] layout (a weight's [out, in]) to w (N * K floats): the
    // values the GEMM multiplies by (for int8, q * scale).
    void unpack_transposed(float* w) const;
    // Row j of that layout (the weight's row j: output feature j), K floats.
    void unpack_row(int64_t j, float* row) const;

private:
    int64_t K_, N_;
    const kernels::KernelSet* ks_;
    WeightType type_ = WeightType::f32;
    std::size_t bytes_ = 0;        // of data_ and scales_
    AlignedPtr data_;              // elements of type_ in the layout above, in float-sized storage
    AlignedPtr scales_;            // int8 only
    std::vector<float> in_scale_;  // int8 only, optional: see set_input_scale

    int64_t offset(int64_t jc, int64_t pc) const;  // element offset of block (jc, pc)
    void pack_wide16(const float* w32, const uint16_t* w16, int64_t ldw);
    void pack_int8(const float* w32, const uint16_t* w16, int64_t ldw);
    void alloc_int8();
    uint8_t* alloc_q4();
    void pack_q4(const float* w32, const uint16_t* w16, int64_t ldw);
    void check_super_blocks() const;  // K a multiple of kSuperBlock for the K-quant types
};

// Packs columns [j0, j0 + nc) x rows [p0, p0 + kc) of B into panels (kc x NR each, zero-padded), the
// panels numbered from 0 at `dst`; a transposed B goes through the kernel set's pack_bt (register transposes). Only
// panels [panel_begin, panel_end) are written (for splitting the work between threads).
void pack_b(const kernels::KernelSet& ks, const float* b, int64_t ldb, bool trans, int64_t p0, int64_t kc, int64_t j0,
            int64_t nc, int nr, float* dst, int64_t panel_begin, int64_t panel_end);

// A is packed by the kernel set's pack_a (kernels.h).

}  // namespace pyattn::gemm

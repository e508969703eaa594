// A K x N GEMM B operand packed once (at weight-load time) into the panel layout of one kernel set,
// so that each later call packs only its activations.
//
// Layout: blocks (jc, pc) of KC x NC, stored jc-major; inside a block, ceil(nc / NR) panels of kc x NR
// floats, each row of a panel contiguous; the last panel is zero-padded to NR columns.
#pragma once
#include <cstdint>

#include "cpu/buffer.h"
#include "kernels/kernels.h"

namespace pyattn::gemm {

class PackedMatrix {
public:
    // Packs B (element (p, j) = b[p * ldb + j], or b[j * ldb + p] when trans) for kernel set `ks`.
    PackedMatrix(const float* b, int64_t ldb, bool trans, int64_t K, int64_t N, const kernels::KernelSet& ks);
    // Packs a weight W given as N x K (row stride ldw) into half-float panels, the same layout with 2-byte
    // elements: from IEEE halves as they are (w16), or from floats rounded to nearest half (w32; pass null
    // for the other). The GEMM widens each element back to float as it loads it.
    PackedMatrix(const uint16_t* w16, const float* w32, int64_t ldw, int64_t K, int64_t N,
                 const kernels::KernelSet& ks);

    int64_t K() const { return K_; }
    int64_t N() const { return N_; }
    const kernels::KernelSet& kernels() const { return *ks_; }
    const kernels::GemmBlocking& blocking() const { return ks_->blocking; }
    bool is_half() const { return half_; }
    // Start of block (jc, pc); jc and pc are multiples of NC and KC. block() for float storage, block_h() for half.
    const float* block(int64_t jc, int64_t pc) const;
    const uint16_t* block_h(int64_t jc, int64_t pc) const;
    std::size_t size_bytes() const { return size_ * (half_ ? sizeof(uint16_t) : sizeof(float)); }
    // Writes the matrix back in the transposed [N, K] layout (a weight's [out, in]) to w (N * K floats).
    void unpack_transposed(float* w) const;

private:
    int64_t K_, N_;
    const kernels::KernelSet* ks_;
    bool half_ = false;
    std::size_t size_;  // elements
    AlignedPtr data_;   // floats, or size_ halves in (size_ + 1) / 2 floats of storage

    int64_t offset(int64_t jc, int64_t pc) const;  // element offset of block (jc, pc)
};

// Packs columns [j0, j0 + nc) x rows [p0, p0 + kc) of B into panels (kc x NR each, zero-padded), the
// panels numbered from 0 at `dst`; a transposed B goes through the kernel set's pack_bt (register transposes). Only
// panels [panel_begin, panel_end) are written (for splitting the work between threads).
void pack_b(const kernels::KernelSet& ks, const float* b, int64_t ldb, bool trans, int64_t p0, int64_t kc, int64_t j0,
            int64_t nc, int nr, float* dst, int64_t panel_begin, int64_t panel_end);

// Packs rows [0, mc) x cols [0, kc) of A (row stride lda) into MR-row panels: element (i, p) of panel r
// at dst[r * kc * MR + p * MR + i]; rows past mc are zero-filled up to a whole panel.
void pack_a(const float* a, int64_t lda, int64_t mc, int64_t kc, int mr, float* dst, float scale = 1.0f);

}  // namespace pyattn::gemm

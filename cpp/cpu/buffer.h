// Aligned float buffers and per-thread scratch space.
#pragma once
#include <cstddef>
#include <cstdlib>
#include <memory>
#include <new>

#include <sys/mman.h>

#include "cpu/asan.h"

namespace pyattn {

constexpr std::size_t kAlign = 64;  // a cache line; also the widest vector register

// Buffers of at least kMapBytes (packed weights) are mapped straight from the kernel and unmapped on free,
// so that freeing a model returns its memory to the system. Through malloc they could stay in the heap:
// glibc raises its mmap threshold after the first large free, and later "large" blocks then come from brk
// memory that free() keeps (measured: 220 of 270 MB still resident after freeing Whisper tiny.en).
constexpr std::size_t kMapBytes = std::size_t(1) << 20;

struct AlignedFree {
    std::size_t mapped = 0;  // bytes mapped with mmap, or 0 for aligned_alloc
    void operator()(float* p) const noexcept {
        if (mapped)
            munmap(p, mapped);
        else
            std::free(p);
    }
};
using AlignedPtr = std::unique_ptr<float[], AlignedFree>;

// n floats, 64-byte aligned. Throws std::bad_alloc (MemoryError in Python) when out of memory.
inline AlignedPtr aligned_floats(std::size_t n) {
    const std::size_t bytes = ((n * sizeof(float) + kAlign - 1) / kAlign) * kAlign;
    if (bytes >= kMapBytes && !kAsan) {  // ASan does not watch mmapped memory: malloc it there
        void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) throw std::bad_alloc();
        return AlignedPtr(static_cast<float*>(p), AlignedFree{bytes});  // page-aligned
    }
    const std::size_t size = bytes ? bytes : kAlign;
    void* p = std::aligned_alloc(kAlign, size);
    if (!p) throw std::bad_alloc();
    // the rounding up to a cache line is no licence to read past n: ASan should say so
    asan_poison(static_cast<float*>(p) + n, size - n * sizeof(float));
    return AlignedPtr(static_cast<float*>(p));
}

// A growable aligned buffer; one per thread and purpose via `scratch<Tag>(n)`. Contents are not kept.
class Scratch {
public:
    float* get(std::size_t n) {
        if (n > cap_) {
            buf_ = aligned_floats(n);
            cap_ = n;
        } else if (kAsan) {  // a caller asking for n floats may touch n, not what an earlier caller asked for
            asan_unpoison(buf_.get(), n * sizeof(float));
            asan_poison(buf_.get() + n, (cap_ - n) * sizeof(float));
        }
        return buf_.get();
    }

private:
    AlignedPtr buf_;
    std::size_t cap_ = 0;
};

// Who owns which per-thread scratch buffer: a caller holding a slot may call code that uses other slots, never its
// own (the GRU holds its slot across GEMM calls, attention holds its own across the GEMMs of its tiles).
enum class Slot : int {
    gemm_b,            // the shared block of B, packed from a plain B or widened from 16 bits
    gemm_a,            // this thread's packed block of A
    gemm_tile,         // an edge panel of B, or an output tile
    gemm_rounded_a,    // A rounded to bfloat16 (bfloat16 weights): a copy, or one row on its way into pairs ...
    gemm_pairs_a,      // ... and A as pairs, for the pair rows kernel
    gemm_quantized_a,  // int8 and 4-bit blocks: the activations quantized per row (int16 or int8 values) ...
    gemm_a_scales,     // ... their scales ...
    gemm_a_sums,       // ... and (int8 values) their blocks' integer sums
    attn_scores,       // attention: one row of scores (direct path)
    attn_k,            // attention: K^T of one head as GEMM panels (flash path)
    attn_v,            // attention: V of one head as GEMM panels
    attn_k_wide,       // attention: K of one head widened from a float16 cache, before packing
    attn_q,            // attention: the query block
    attn_tile,         // attention: one tile of scores
    attn_out,          // attention: running output, max and sum of the query block
    attn_pairs,        // attention (bfloat16): the probabilities of one tile as pairs
    gru_hidden,        // the GRU's hidden projection of one step
    gemm_cols_a,       // gemm_cols: this thread's quantized or rounded rows of A (int8 / 4-bit / bfloat16 B) ...
    gemm_cols_scales,  // ... their block scales ...
    gemm_cols_sums,    // ... and (int8 values) their blocks' integer sums
    gemm_cols_pairs,   // gemm_cols: this thread's bfloat16 rows of A as pairs
    decoder_norm,      // a decoding step in one parallel region: this thread's normalized rows
    gemm_scaled_a,     // int8 with an input scale: this thread's rows of A times the scale, before quantizing
    gemm_q4_wide,      // 4-bit blocks, many rows: this thread's panel unpacked for the wide tile
};

template <Slot S>
inline float* scratch(std::size_t n) {
    thread_local Scratch s;
    return s.get(n);
}

}  // namespace pyattn

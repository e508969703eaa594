// Aligned float buffers and per-thread scratch space.
#pragma once
#include <cstddef>
#include <cstdlib>
#include <memory>
#include <new>

namespace pyattn {

constexpr std::size_t kAlign = 64;  // a cache line; also the widest vector register

struct AlignedFree {
    void operator()(float* p) const noexcept { std::free(p); }
};
using AlignedPtr = std::unique_ptr<float[], AlignedFree>;

// n floats, 64-byte aligned. Throws std::bad_alloc (MemoryError in Python) when out of memory.
inline AlignedPtr aligned_floats(std::size_t n) {
    const std::size_t bytes = ((n * sizeof(float) + kAlign - 1) / kAlign) * kAlign;
    void* p = std::aligned_alloc(kAlign, bytes ? bytes : kAlign);
    if (!p) throw std::bad_alloc();
    return AlignedPtr(static_cast<float*>(p));
}

// A growable aligned buffer; one per thread and purpose via `scratch<Tag>(n)`. Contents are not kept.
class Scratch {
public:
    float* get(std::size_t n) {
        if (n > cap_) {
            buf_ = aligned_floats(n);
            cap_ = n;
        }
        return buf_.get();
    }

private:
    AlignedPtr buf_;
    std::size_t cap_ = 0;
};

template <int Slot>
inline float* scratch(std::size_t n) {
    thread_local Scratch s;
    return s.get(n);
}

}  // namespace pyattn

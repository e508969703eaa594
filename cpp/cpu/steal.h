// Work shared by a team of threads that each keep to their own part while they can (cpu::Steal).
#pragma once
#include <atomic>
#include <cstdint>
#include <memory>

namespace pyattn::cpu {

// Units [0, n) shared by the nth threads of a team: each thread owns a contiguous range (as a static split) and takes
// its units from the front; a thread whose range is empty takes the others' units from their back ends. A thread that
// is slow (less memory bandwidth, or descheduled for another process) leaves its last units to the others instead of
// making them wait at the next barrier, and each thread's reads run through its own range while it lasts.
// Handing out every unit to whoever asks balanced as well, but made a decoding step's GEMVs 1.35x slower: each
// thread's reads jumped every chunk, and the hardware prefetcher lost the stream.
// One atomic word per range: units taken from the front (high half) and from the back (low half), zero at first.
struct Steal {
    std::atomic<uint64_t>* taken;  // one per thread of the team, zeros
    int tid, nth;

    bool steal = true;  // false: each thread its own range alone (the static split)

    template <typename Work>
    void run(int64_t n, Work&& work) const {
        for (int k = 0; k < (steal ? nth : 1); ++k) {
            const int owner = (tid + k) % nth;
            const int64_t lo = n * owner / nth, hi = n * (owner + 1) / nth;
            std::atomic<uint64_t>& t = taken[owner];
            uint64_t v = t.load(std::memory_order_relaxed);
            for (;;) {
                const int64_t front = static_cast<int64_t>(v >> 32), back = static_cast<int64_t>(v & 0xffffffffu);
                if (lo + front >= hi - back) break;
                const uint64_t next = k == 0 ? v + (uint64_t{1} << 32) : v + 1;
                if (!t.compare_exchange_weak(v, next, std::memory_order_relaxed)) continue;  // v reloaded
                work(k == 0 ? lo + front : hi - 1 - back);
                v = t.load(std::memory_order_relaxed);
            }
        }
    }
};

// The words of `count` shared steps of an nt-thread team, zeros: step k of thread ranges at get() + k * nt.
inline std::unique_ptr<std::atomic<uint64_t>[]> steal_words(int64_t count, int nt) {
    return std::unique_ptr<std::atomic<uint64_t>[]>(new std::atomic<uint64_t>[count * nt]());
}

}  // namespace pyattn::cpu

// AddressSanitizer hooks for pyattn's own memory pools (a no-op in normal builds).
//
// ASan sees only what goes through malloc/free. pyattn keeps memory of its own -- thread-local scratch
// buffers that grow and are reused, a cache of large result blocks, mmapped weight panels -- and an overrun
// inside such a pool, or a use of a block after it went back to the pool, would be invisible to it. In a
// sanitized build (cmake -DPYATTN_SANITIZE=address,...) the pools therefore tell ASan what is live:
// the unused tail of a scratch buffer is poisoned, and the pools that would hide a free (the block cache,
// the mmap path) are bypassed so that every block is a real malloc/free that ASan redzones and quarantines.
#pragma once
#include <cstddef>

#if defined(__SANITIZE_ADDRESS__)
#define PYATTN_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define PYATTN_ASAN 1
#endif
#endif

#ifdef PYATTN_ASAN
#include <sanitizer/asan_interface.h>
#endif

namespace pyattn {

#ifdef PYATTN_ASAN
constexpr bool kAsan = true;
inline void asan_poison(const void* p, std::size_t bytes) { ASAN_POISON_MEMORY_REGION(p, bytes); }
inline void asan_unpoison(const void* p, std::size_t bytes) { ASAN_UNPOISON_MEMORY_REGION(p, bytes); }
#else
constexpr bool kAsan = false;
inline void asan_poison(const void*, std::size_t) {}
inline void asan_unpoison(const void*, std::size_t) {}
#endif

}  // namespace pyattn

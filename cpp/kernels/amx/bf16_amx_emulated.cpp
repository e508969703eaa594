// The `amx_emulated` kernel set: the `amx` set's tile loops (amx_tiles.inl) on a software model of the tile
// registers, so that their packing, strides and edges are tested on every AVX512_BF16 CPU. Slow (scalar products):
// for tests only, never chosen by the dispatcher nor listed by available_isas. The model computes TDPBF16PS's
// quantity (each pair's products of bfloat16 numbers, exact in float32, added to the float sum) in its documented
// order, without its flushing of denormals.
#include <immintrin.h>

#include "kernels/kernels.h"

namespace pyattn::kernels {
namespace {

#include "kernels/amx/amx_tiles.inl"

inline float bf16_float(uint32_t h) {
    const uint32_t u = h << 16;
    float f;
    __builtin_memcpy(&f, &u, 4);
    return f;
}

struct EmulatedTiles {
    alignas(64) unsigned char reg[8][16][64];
    template <int T>
    void zero() {
        __builtin_memset(reg[T], 0, sizeof reg[T]);
    }
    template <int T>
    void load(const void* p, int64_t stride) {
        for (int r = 0; r < 16; ++r) __builtin_memcpy(reg[T][r], static_cast<const char*>(p) + r * stride, 64);
    }
    template <int T>
    void store(void* p, int64_t stride) {
        for (int r = 0; r < 16; ++r) __builtin_memcpy(static_cast<char*>(p) + r * stride, reg[T][r], 64);
    }
    template <int C, int A, int B>
    void dot() {
        for (int m = 0; m < 16; ++m)
            for (int n = 0; n < 16; ++n) {
                float s;
                __builtin_memcpy(&s, reg[C][m] + 4 * n, 4);
                for (int k = 0; k < 16; ++k) {
                    uint32_t a, b;
                    __builtin_memcpy(&a, reg[A][m] + 4 * k, 4);
                    __builtin_memcpy(&b, reg[B][k] + 4 * n, 4);
                    s += bf16_float(a & 0xffff) * bf16_float(b & 0xffff);
                    s += bf16_float(a >> 16) * bf16_float(b >> 16);
                }
                __builtin_memcpy(reg[C][m] + 4 * n, &s, 4);
            }
    }
};

}  // namespace

KernelSet& amx_emulated_kernel_set() {
    static KernelSet ks = amx_set<EmulatedTiles>("amx_emulated");
    return ks;
}

}  // namespace pyattn::kernels

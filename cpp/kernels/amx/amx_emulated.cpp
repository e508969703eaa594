// The `amx_emulated` kernel set: the `amx` set's tile loops (amx_tiles.inl) on a software model of the tile
// registers, so that their packing, strides and edges are tested on every AVX512_BF16 CPU. Slow (scalar products):
// for tests only, never chosen by the dispatcher nor listed by available_isas. The model computes TDPBF16PS's
// quantity (each pair's products of bfloat16 numbers, exact in float32, added to the float sum) in its documented
// order, without its flushing of denormals, and TDPBSSD's and TDPBSUD's (int8 quads' products added to int32 sums:
// exact); a shape the instructions would fault on traps.
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
    TileShapes shape;
    explicit EmulatedTiles(const TileShapes& s) : shape(s) {}
    template <int T>
    void zero() {
        __builtin_memset(reg[T], 0, sizeof reg[T]);
    }
    template <int T>
    void load(const void* p, int64_t stride) {
        zero<T>();
        for (int r = 0; r < shape.rows[T]; ++r)
            __builtin_memcpy(reg[T][r], static_cast<const char*>(p) + r * stride, shape.bytes[T]);
    }
    template <int T>
    void store(void* p, int64_t stride) {
        for (int r = 0; r < shape.rows[T]; ++r)
            __builtin_memcpy(static_cast<char*>(p) + r * stride, reg[T][r], shape.bytes[T]);
    }
    // TDPBSSD (kSignedB) and TDPBSUD: C's rows x its bytes / 4 int32, A's bytes / 4 quads of k (as many as B's rows)
    template <int C, int A, int B, bool kSignedB>
    void dot_int8() {
        if (shape.rows[C] != shape.rows[A] || shape.bytes[C] != shape.bytes[B] || shape.bytes[A] != 4 * shape.rows[B])
            __builtin_trap();  // a shape the instructions would fault on
        for (int m = 0; m < shape.rows[C]; ++m)
            for (int n = 0; n < shape.bytes[C] / 4; ++n) {
                int32_t s;
                __builtin_memcpy(&s, reg[C][m] + 4 * n, 4);
                for (int k = 0; k < shape.bytes[A]; ++k) {
                    const uint8_t b = reg[B][k / 4][4 * n + k % 4];
                    s += static_cast<int8_t>(reg[A][m][k]) * (kSignedB ? static_cast<int8_t>(b) : b);
                }
                __builtin_memcpy(reg[C][m] + 4 * n, &s, 4);
            }
    }
    template <int C, int A, int B>
    void dot_ss() {
        dot_int8<C, A, B, true>();
    }
    template <int C, int A, int B>
    void dot_su() {
        dot_int8<C, A, B, false>();
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
    static KernelSet ks = amx_set<EmulatedTiles>("amx_emulated", true);
    return ks;
}

}  // namespace pyattn::kernels

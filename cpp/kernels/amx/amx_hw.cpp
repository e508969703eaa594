// The `amx` kernel set: AMX-BF16 tiles for the blocked GEMM of bfloat16 weights and, where cpuid reports AMX-INT8,
// int8 tiles for int8 products of many rows (compiled with -mamx-tile -mamx-bf16 -mamx-int8 and the AVX-512 flags).
// The dispatcher picks it only where cpuid reports AMX-BF16 and Linux granted the tile state (cpu::amx_granted). The
// loops are amx_tiles.inl's, tested on every AVX512_BF16 CPU through the software tiles of amx_emulated.cpp; these
// instructions only where the CPU has them.
#include <immintrin.h>

#include "kernels/kernels.h"

namespace pyattn::kernels {
namespace {

#include "kernels/amx/amx_tiles.inl"

// The tile configuration (palette 1): byte 0 the palette, bytes 16 + 2 t the bytes per row of tile t (16 bits),
// byte 48 + t its rows. Loaded per call: another library in the thread (oneDNN) may have configured others.
struct HwTiles {
    explicit HwTiles(const TileShapes& shapes) {
        alignas(64) unsigned char cfg[64] = {};
        cfg[0] = 1;
        for (int t = 0; t < 8; ++t) {
            cfg[16 + 2 * t] = static_cast<unsigned char>(shapes.bytes[t]);
            cfg[48 + t] = static_cast<unsigned char>(shapes.rows[t]);
        }
        _tile_loadconfig(cfg);
    }
    ~HwTiles() { _tile_release(); }
    HwTiles(const HwTiles&) = delete;
    HwTiles& operator=(const HwTiles&) = delete;
    // GCC's tile intrinsics paste their register numbers into the instruction's text: literals, one per case.
#define PYATTN_EACH_TILE(F) F(0) F(1) F(2) F(3) F(4) F(5) F(6) F(7)
    template <int T>
    void zero() {
#define PYATTN_ZERO(n) \
    if constexpr (T == n) _tile_zero(n);
        PYATTN_EACH_TILE(PYATTN_ZERO)
#undef PYATTN_ZERO
    }
    template <int T>
    void load(const void* p, int64_t stride) {
#define PYATTN_LOAD(n) \
    if constexpr (T == n) _tile_loadd(n, p, stride);
        PYATTN_EACH_TILE(PYATTN_LOAD)
#undef PYATTN_LOAD
    }
    template <int T>
    void store(void* p, int64_t stride) {
#define PYATTN_STORE(n) \
    if constexpr (T == n) _tile_stored(n, p, stride);
        PYATTN_EACH_TILE(PYATTN_STORE)
#undef PYATTN_STORE
    }
#undef PYATTN_EACH_TILE
    // the four products of amx_tiles.inl's 2 x 2 block
    template <int C, int A, int B>
    void dot() {
        static_assert(A == 4 + C / 2 && B == 6 + C % 2, "a product of amx_tiles.inl's block");
        if constexpr (C == 0) _tile_dpbf16ps(0, 4, 6);
        if constexpr (C == 1) _tile_dpbf16ps(1, 4, 7);
        if constexpr (C == 2) _tile_dpbf16ps(2, 5, 6);
        if constexpr (C == 3) _tile_dpbf16ps(3, 5, 7);
    }
    // the products of the int8 tile (signed x signed) and of the block types' tiles (signed A x unsigned B)
    template <int C, int A, int B>
    void dot_ss() {
        static_assert(A == 4 && B == 6 + C && C < 2, "a product of amx_tiles.inl's int8 tile");
        if constexpr (C == 0) _tile_dpbssd(0, 4, 6);
        if constexpr (C == 1) _tile_dpbssd(1, 4, 7);
    }
    template <int C, int A, int B>
    void dot_su() {
        static_assert(A == 4 && B == 6 + C % 2 && C < 4, "a product of amx_tiles.inl's block tiles");
        if constexpr (C == 0) _tile_dpbsud(0, 4, 6);
        if constexpr (C == 1) _tile_dpbsud(1, 4, 7);
        if constexpr (C == 2) _tile_dpbsud(2, 4, 6);
        if constexpr (C == 3) _tile_dpbsud(3, 4, 7);
    }
};

}  // namespace

KernelSet& amx_kernel_set() {
    static KernelSet ks = amx_set<HwTiles>("amx", __builtin_cpu_supports("amx-int8"));
    return ks;
}

}  // namespace pyattn::kernels

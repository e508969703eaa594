// The tile kernels of the AMX sets -- bfloat16 (Bf16PairKernels::tiles, kernels.h), int8 (Int8Kernels::tiles) and the
// block types' wide tile (Q4Kernels::wide) -- written once against a tile policy `T` so that the same loops run on AMX
// (amx_hw.cpp: the instructions) and on a software model of the eight tile registers (amx_emulated.cpp: what tests run
// where the CPU has no AMX). Included inside an anonymous namespace of a unit compiled with the AVX-512 flags and
// -ffp-contract=off.
//
// T's interface (one object per call: its constructor configures the tiles, its destructor releases them):
//   T(shapes)                                            tile t: shapes.rows[t] rows of shapes.bytes[t] bytes
//   zero<t>(), load<t>(p, stride), store<t>(p, stride)   its rows at p + r stride
//   dot<c, a, b>()                                       TDPBF16PS: c[m][n] += sum_k a[m] pair k . b[k] pair n
//   dot_ss<c, a, b>(), dot_su<c, a, b>()                 TDPBSSD, TDPBSUD: c[m][n] += sum_k a[m] quad k . b[k] quad n
//                                                        (signed bytes; B's unsigned for dot_su)

// Rows and bytes per row of the eight tiles (0: unused).
struct TileShapes {
    int rows[8] = {};
    int bytes[8] = {};
};

// bfloat16: every tile 16 rows x 64 bytes. C tiles 16 x 16 floats, A tiles 16 rows x 16 pairs, B tiles 16 pairs x
// 16 columns. Tiles 0-3 hold the 32 x 32 block of C, 4-5 two 16-row slices of A, 6-7 two 16-column halves of B's
// 32-column panel, which its panel layout (pair p of column j at p 32 + j) gives at a stride of 128 bytes.
inline TileShapes bf16_shapes() {
    TileShapes s;
    for (int t = 0; t < 8; ++t) s.rows[t] = 16, s.bytes[t] = 64;
    return s;
}

// The first c of 16 lanes (none for c <= 0, all for c >= 16).
inline __mmask16 tile_lanes(int64_t c) { return (__mmask16)(c >= 16 ? 0xffffu : c <= 0 ? 0u : (1u << c) - 1u); }

// c (rows x cols, row stride ldc) = t (32 x 32 floats) + beta c
inline void tile_out(const float* t, int64_t rows, int64_t cols, float* c, int64_t ldc, float beta) {
    const __m512 vb = _mm512_set1_ps(beta);
    for (int64_t i = 0; i < rows; ++i)
        for (int64_t j = 0; j < cols; j += 16) {
            const __mmask16 k = tile_lanes(cols - j);
            __m512 v = _mm512_loadu_ps(t + i * 32 + j);
            if (beta != 0.0f) v = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(k, c + i * ldc + j), v);
            _mm512_mask_storeu_ps(c + i * ldc + j, k, v);
        }
}

template <class T>
void tiles_bf16(int64_t m, int64_t n, int64_t pairs, const uint32_t* a, int64_t lda, const uint32_t* b, float* c,
                int64_t ldc, float beta) {
    T t(bf16_shapes());
    alignas(64) float tmp[32 * 32];
    const int64_t sa = lda * 4, sc = ldc * 4;  // strides in bytes
    for (int64_t i0 = 0; i0 < m; i0 += 32) {
        const int64_t rows = m - i0 < 32 ? m - i0 : 32;
        const uint32_t* a0 = a + i0 * lda;
        const uint32_t* a1 = a0 + 16 * lda;
        for (int64_t j0 = 0; j0 < n; j0 += 32) {
            const int64_t cols = n - j0 < 32 ? n - j0 : 32;
            const uint32_t* bq = b + j0 * pairs;  // panel j0 / 32
            float* c0 = c + i0 * ldc + j0;
            // whole blocks with beta 0 or 1 go from C to C; the others through tmp
            const bool whole = rows == 32 && cols == 32 && (beta == 0.0f || beta == 1.0f);
            if (whole && beta == 1.0f) {
                t.template load<0>(c0, sc);
                t.template load<1>(c0 + 16, sc);
                t.template load<2>(c0 + 16 * ldc, sc);
                t.template load<3>(c0 + 16 * ldc + 16, sc);
            } else {
                t.template zero<0>();
                t.template zero<1>();
                t.template zero<2>();
                t.template zero<3>();
            }
            for (int64_t p = 0; p < pairs; p += 16) {
                t.template load<4>(a0 + p, sa);
                t.template load<5>(a1 + p, sa);
                t.template load<6>(bq + p * 32, 128);
                t.template load<7>(bq + p * 32 + 16, 128);
                t.template dot<0, 4, 6>();
                t.template dot<1, 4, 7>();
                t.template dot<2, 5, 6>();
                t.template dot<3, 5, 7>();
            }
            if (whole) {
                t.template store<0>(c0, sc);
                t.template store<1>(c0 + 16, sc);
                t.template store<2>(c0 + 16 * ldc, sc);
                t.template store<3>(c0 + 16 * ldc + 16, sc);
            } else {
                t.template store<0>(tmp, 128);
                t.template store<1>(tmp + 16, 128);
                t.template store<2>(tmp + 16 * 32, 128);
                t.template store<3>(tmp + 16 * 32 + 16, 128);
                tile_out(tmp, rows, cols, c0, ldc, beta);
            }
        }
    }
}

#include "kernels/avx512/wide_steps.inl"  // store_wide, and the wide tiles' float steps (below)
#include "kernels/x86_int8_vi.inl"        // ViPrefetch

// ---- int8 (Int8Kernels::tiles) ----
// M <= 16 rows of int8 A by one 32-column panel of the avx512_vnni set's int8 layout: per block of kQBlock k, 8 groups
// of 4 k, each 32 columns x 4 bytes (int8_vnni.cpp) -- a B tile of 8 rows x 16 columns per half, at a stride of 128
// bytes. Tile 4: the block's A (M rows x 32 bytes), 6-7: B's halves, 0-1: C's halves (M x 16 int32). TDPBSSD multiplies
// signed bytes by signed bytes: the exact sums sum_k a b, which the VNNI kernel reaches through its sign flip and -128
// sum a. Per block the two C tiles are zeroed, multiplied, stored and their sums scaled into float sums held in
// registers, in int8_kernels.inl's order (fma(float(sum), sa sw, s)): the same bits as every other kernel set.
// The shapes of the int8 tiles (here and below): C tiles 0-3 m rows x 16 int32; A tile 4 m rows x `kbytes` bytes of
// k; B tiles 6-7 kbytes / 4 groups x 16 columns.
inline TileShapes block_shapes(int m, int kbytes) {
    TileShapes s;
    for (int t = 0; t < 4; ++t) s.rows[t] = m, s.bytes[t] = 64;
    s.rows[4] = m;
    s.bytes[4] = kbytes;
    s.rows[6] = s.rows[7] = kbytes / 4;
    s.bytes[6] = s.bytes[7] = 64;
    return s;
}

// One block's int32 sums for M rows x 32 columns into acc: C tiles 0-1 zeroed, A's 32 bytes of k (tile 4) times B's
// two 16-column halves (tiles 6-7, at a stride of 128 bytes); B's bytes signed (int8 weights: TDPBSSD) or unsigned
// (unpacked block values: TDPBSUD).
template <bool kSignedB, class T, int M>
inline void block_sums(T& t, const int8_t* a, int64_t lda, const void* b, int32_t (&acc)[M][32]) {
    t.template zero<0>();
    t.template zero<1>();
    t.template load<4>(a, lda);
    t.template load<6>(b, 128);
    t.template load<7>(static_cast<const char*>(b) + 64, 128);
    if constexpr (kSignedB) {
        t.template dot_ss<0, 4, 6>();
        t.template dot_ss<1, 4, 7>();
    } else {
        t.template dot_su<0, 4, 6>();
        t.template dot_su<1, 4, 7>();
    }
    t.template store<0>(&acc[0][0], 128);
    t.template store<1>(&acc[0][16], 128);
}

template <class T, int M>
void tiles_int8_m(int64_t nb, const int8_t* __restrict a, int64_t lda, const float* __restrict sa, int64_t ldsa,
                  const int8_t* __restrict b, const float* __restrict sw, float* __restrict c, int64_t ldc,
                  const float* bias, int64_t ahead) {
    constexpr int64_t kBlockBytes = kQBlock * 32;  // a panel's block: 8 groups x 32 columns x 4 k
    T t(block_shapes(M, kQBlock));
    alignas(64) int32_t acc[M][32];
    __m512 sum[M][2];
#pragma GCC unroll 16
    for (int i = 0; i < M; ++i) sum[i][0] = sum[i][1] = _mm512_setzero_ps();
    for (int64_t blk = 0; blk < nb; ++blk) {
        ViPrefetch::prefetch(b, kBlockBytes, ahead);  // this block's panel bytes, `ahead` bytes on (kernels.h)
        block_sums<true>(t, a + blk * kQBlock, lda, b, acc);
        const __m512 w0 = _mm512_loadu_ps(sw), w1 = _mm512_loadu_ps(sw + 16);
#pragma GCC unroll 16
        for (int i = 0; i < M; ++i) {
            const __m512 s = _mm512_set1_ps(sa[i * ldsa + blk]);
            sum[i][0] =
                _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512(&acc[i][0])), _mm512_mul_ps(s, w0), sum[i][0]);
            sum[i][1] =
                _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512(&acc[i][16])), _mm512_mul_ps(s, w1), sum[i][1]);
        }
        b += kBlockBytes;
        sw += 32;
    }
    store_wide<M>(sum, c, ldc, bias);
}

template <class T, int MR, int M = MR>
void tiles_int8(int64_t m, int64_t nb, const void* a, int64_t lda, const float* sa, const int32_t* ta, int64_t ldsa,
                const int8_t* b, const float* sw, float* c, int64_t ldc, const float* bias, int64_t ahead) {
    if constexpr (M >= 1) {
        if (m == M)
            return tiles_int8_m<T, M>(nb, static_cast<const int8_t*>(a), lda, sa, ldsa, b, sw, c, ldc, bias, ahead);
        return tiles_int8<T, MR, M - 1>(m, nb, a, lda, sa, ta, ldsa, b, sw, c, ldc, bias, ahead);
    }
}

// ---- the block types' wide tile (Q4Kernels::wide) ----
// The unpacked wide panel (kernels.h: per block, 8 groups of 32 columns x 4 k as unsigned bytes, then the columns'
// floats) is laid out as the int8 panel: B tiles of the same shape and stride. TDPBSUD multiplies A's signed bytes by
// B's unsigned ones: the exact int32 sums the VNNI wide tiles make with vpdpbusd, then their float steps
// (avx512/wide_steps.inl): the same bits. The types summed by half-blocks (Q6_K, Q3_K, Q2_K) take a tile product per
// k half (A tiles of 16 bytes, B tiles of 4 groups), four C tiles.

template <class T, int M, bool kMin, int kOffset>
void tiles_q4_wide_m(int64_t nb, const int8_t* __restrict a, int64_t lda, const float* __restrict sa,
                     const int32_t* __restrict ta, int64_t ldsa, const uint8_t* __restrict b, float* __restrict c,
                     int64_t ldc, const float* bias) {
    T t(block_shapes(M, kQBlock));
    alignas(64) int32_t acc[M][32];
    __m512 sum[M][2];
#pragma GCC unroll 16
    for (int i = 0; i < M; ++i) sum[i][0] = sum[i][1] = _mm512_setzero_ps();
    for (int64_t blk = 0; blk < nb; ++blk, b += kQ4WideBlockBytes) {
        block_sums<false>(t, a + blk * kQBlock, lda, b, acc);
        const Q4WideStep<kMin, kOffset> step(reinterpret_cast<const float*>(b + kQBlock * kQ4Wide));
#pragma GCC unroll 16
        for (int i = 0; i < M; ++i)
            for (int h = 0; h < 2; ++h)
                sum[i][h] =
                    step(h, _mm512_load_si512(&acc[i][16 * h]), sa[i * ldsa + blk], ta[i * ldsa + blk], sum[i][h]);
    }
    store_wide<M>(sum, c, ldc, bias);
}

template <class T, int M, int kOffset>
void tiles_halves_wide_m(int64_t nb, const int8_t* __restrict a, int64_t lda, const float* __restrict sa,
                         const int32_t* __restrict ta, int64_t ldsa, const uint8_t* __restrict b, float* __restrict c,
                         int64_t ldc, const float* bias) {
    T t(block_shapes(M, kQBlock / 2));
    alignas(64) int32_t acc[2][M][32];  // k half, row, column
    __m512 sum[M][2];
#pragma GCC unroll 16
    for (int i = 0; i < M; ++i) sum[i][0] = sum[i][1] = _mm512_setzero_ps();
    for (int64_t blk = 0; blk < nb; ++blk, b += kQ4WideBlockBytes) {
        for (int kh = 0; kh < 2; ++kh) {  // C tiles 2 kh + column half
            t.template load<4>(a + blk * kQBlock + 16 * kh, lda);
            t.template load<6>(b + 4 * 128 * kh, 128);
            t.template load<7>(b + 4 * 128 * kh + 64, 128);
            if (kh == 0) {
                t.template zero<0>();
                t.template zero<1>();
                t.template dot_su<0, 4, 6>();
                t.template dot_su<1, 4, 7>();
            } else {
                t.template zero<2>();
                t.template zero<3>();
                t.template dot_su<2, 4, 6>();
                t.template dot_su<3, 4, 7>();
            }
        }
        t.template store<0>(&acc[0][0][0], 128);
        t.template store<1>(&acc[0][0][16], 128);
        t.template store<2>(&acc[1][0][0], 128);
        t.template store<3>(&acc[1][0][16], 128);
        const float* f = reinterpret_cast<const float*>(b + kQBlock * kQ4Wide);
#pragma GCC unroll 2
        for (int h = 0; h < 2; ++h) {
            const HalvesWideStep<kOffset> step(f, h);
#pragma GCC unroll 16
            for (int i = 0; i < M; ++i)
                sum[i][h] = step(_mm512_load_si512(&acc[0][i][16 * h]), _mm512_load_si512(&acc[1][i][16 * h]),
                                 sa[i * ldsa + blk], ta[i * ldsa + blk], sum[i][h]);
        }
    }
    store_wide<M>(sum, c, ldc, bias);
}

// Rows per call of the block types' tiles: 12 (24 float sums; the object code keeps them in registers) and, for the
// halves' tiles, whose step holds more constants, 6 (at 8 rows GCC kept all 16 float sums on the stack, at 6 it
// spills 2 of 12). Chosen by reading the object code, not measured: no AMX machine has run them yet.
constexpr int kQ4TileRows = 12, kHalvesTileRows = 6;

template <class T, bool kMin, int kOffset, int M = kQ4TileRows>
void tiles_q4_wide(int64_t m, int64_t nb, const int8_t* a, int64_t lda, const float* sa, const int32_t* ta,
                   int64_t ldsa, const uint8_t* b, float* c, int64_t ldc, const float* bias) {
    if constexpr (M >= 1) {
        if (m == M) return tiles_q4_wide_m<T, M, kMin, kOffset>(nb, a, lda, sa, ta, ldsa, b, c, ldc, bias);
        return tiles_q4_wide<T, kMin, kOffset, M - 1>(m, nb, a, lda, sa, ta, ldsa, b, c, ldc, bias);
    }
}

template <class T, int kOffset, int M = kHalvesTileRows>
void tiles_halves_wide(int64_t m, int64_t nb, const int8_t* a, int64_t lda, const float* sa, const int32_t* ta,
                       int64_t ldsa, const uint8_t* b, float* c, int64_t ldc, const float* bias) {
    if constexpr (M >= 1) {
        if (m == M) return tiles_halves_wide_m<T, M, kOffset>(nb, a, lda, sa, ta, ldsa, b, c, ldc, bias);
        return tiles_halves_wide<T, kOffset, M - 1>(m, nb, a, lda, sa, ta, ldsa, b, c, ldc, bias);
    }
}

template <class T>
struct AmxWide {  // set_wide_tiles' view of these tiles
    static constexpr int kQ4Rows = kQ4TileRows, kHalvesRows = kHalvesTileRows;
    template <bool kMin, int kOffset>
    static constexpr Q4WideKernel q4 = &tiles_q4_wide<T, kMin, kOffset>;
    template <int kOffset>
    static constexpr Q4WideKernel halves = &tiles_halves_wide<T, kOffset>;
};

// Rows per int8 tile call: 12 rows x 2 registers of float sums (24 of 32 zmm), beside the block's two scale vectors
// and the temporaries. Chosen by that count, not measured: no AMX machine has run it yet.
constexpr int kInt8TileRows = 12;

// The kernel set `name`: the avx512_bf16 set (its pair kernels for small M and the attention, its VNNI int8 and block
// kernels for products of few rows) with these tile kernels for the blocked GEMM of bfloat16 weights and, where
// `int8`, for int8 products and the block types' wide tile (many rows).
template <class T>
KernelSet amx_set(const char* name, bool int8) {
    KernelSet k = avx512_bf16_kernel_set();
    k.name = name;
    if (k.bf16pairs.micro && k.blocking.nr == 32) k.bf16pairs.tiles = &tiles_bf16<T>;
    if (int8 && k.i8.nr == 32 && k.i8.int8_a()) {
        k.i8.tiles = &tiles_int8<T, kInt8TileRows>;
        k.i8.tiles_mr = kInt8TileRows;
    }
    if (int8 && k.q4.wide[q4_kind(false, false)]) set_wide_tiles<AmxWide<T>>(k.q4);
    return k;
}

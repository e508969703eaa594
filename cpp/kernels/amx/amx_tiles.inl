// The bfloat16 tile kernel of the AMX sets (Bf16PairKernels::tiles, kernels.h), written once against a tile policy
// `T` so that the same loops run on AMX (bf16_amx.cpp: the instructions) and on a software model of the eight tile
// registers (bf16_amx_emulated.cpp: what tests run where the CPU has no AMX). Included inside an anonymous namespace
// of a unit compiled with the AVX-512 flags.
//
// T's interface (one object per call: its constructor configures the tiles, its destructor releases them):
//   zero<t>(), load<t>(p, stride), store<t>(p, stride)   16 rows of 64 bytes at p + r stride
//   dot<c, a, b>()                                       TDPBF16PS: c[m][n] += sum_k a[m] pair k . b[k] pair n
// Every tile is configured 16 rows x 64 bytes: C tiles 16 x 16 floats, A tiles 16 rows x 16 pairs, B tiles 16
// pairs x 16 columns. Tiles 0-3 hold the 32 x 32 block of C, 4-5 two 16-row slices of A, 6-7 two 16-column halves
// of B's 32-column panel, which its panel layout (pair p of column j at p 32 + j) gives at a stride of 128 bytes.

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
    T t;
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

// The kernel set `name`: the avx512_bf16 set (its pair kernels for small M and the attention) with this tile kernel
// for the blocked GEMM of bfloat16 weights.
template <class T>
KernelSet amx_set(const char* name) {
    KernelSet k = avx512_bf16_kernel_set();
    k.name = name;
    if (k.bf16pairs.micro && k.blocking.nr == 32) k.bf16pairs.tiles = &tiles_bf16<T>;
    return k;
}

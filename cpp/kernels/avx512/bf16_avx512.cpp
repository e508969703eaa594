// AVX512_BF16 GEMM micro-kernel and the kernel set that uses it (compiled with -mavx512f -mavx512bw -mavx512vl
// -mavx512vnni -mavx512bf16).
//
// vdpbf16ps multiplies 16 lanes of bfloat16 pairs and adds both products to the lane's float: 64 flops per zmm
// instruction where vfmadd231ps does 32. The blocked path of bfloat16 weights (gemm.cpp's run_blocked_bf16) packs A
// and B into pairs of k (Bf16PairKernels in kernels.h) and runs this 12 x 32 tile: 24 float sums, 2 panel registers,
// and A's pair broadcast from memory (the avx512 set's tile and blocking, so that its packed bfloat16 weights serve
// both paths unchanged).
#include <immintrin.h>

#include "kernels/kernels.h"

namespace pyattn::kernels {
namespace {

template <int MR, int NV>
void bf16_micro(int64_t pairs, const uint32_t* __restrict a, const uint32_t* __restrict b, float* __restrict c,
                int64_t ldc, float beta) {
    __m512 acc[MR][NV];
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
        for (int j = 0; j < NV; ++j) acc[i][j] = _mm512_setzero_ps();
    for (int64_t p = 0; p < pairs; ++p) {
        __m512bh bv[NV];
#pragma GCC unroll 4
        for (int j = 0; j < NV; ++j) bv[j] = (__m512bh)_mm512_loadu_si512(b + j * 16);
#pragma GCC unroll 16
        for (int i = 0; i < MR; ++i) {
            const __m512bh av = (__m512bh)_mm512_set1_epi32(static_cast<int>(a[i]));
#pragma GCC unroll 4
            for (int j = 0; j < NV; ++j) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], av, bv[j]);
        }
        a += MR;
        b += NV * 16;
    }
    const __m512 vb = _mm512_set1_ps(beta);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
        for (int j = 0; j < NV; ++j) {
            float* o = c + i * ldc + j * 16;
            __m512 v = acc[i][j];
            if (beta == 1.0f)
                v = _mm512_add_ps(v, _mm512_loadu_ps(o));
            else if (beta != 0.0f)
                v = _mm512_fmadd_ps(vb, _mm512_loadu_ps(o), v);
            _mm512_storeu_ps(o, v);
        }
}

}  // namespace

// The AVX512-VNNI set with this micro-kernel for bfloat16 weights.
KernelSet& avx512_bf16_kernel_set() {
    static KernelSet ks = [] {
        KernelSet k = avx512_vnni_kernel_set();
        k.name = "avx512_bf16";
        if (k.blocking.mr == 12 && k.blocking.nr == 32) k.bf16pairs.micro = &bf16_micro<12, 2>;
        return k;
    }();
    return ks;
}

}  // namespace pyattn::kernels

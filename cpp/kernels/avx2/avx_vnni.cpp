// The avx_vnni kernel set: AVX2 with AVX-VNNI (vpdpbusd on 256-bit registers in VEX encoding, without AVX-512:
// Intel's cores since Alder Lake, Sierra Forest). The avx2 set with its int8 and block kernels on vpdpbusd:
// int8_kernels.inl's tiles on quads (the avx512_vnni set's panels and arithmetic, 8 lanes a register) and
// q4_sums_vnni.inl's block sums, 4 rows a call (16 registers). The same bits as every other set.
//
// Compiled twice (CMakeLists.txt): with -mavxvnni, the set `avx_vnni`, picked where cpuid reports AVX-VNNI; and with
// -mavx512vl -mavx512vnni and PYATTN_AVX_VNNI_EVEX, the test-only set `avx_vnni_evex` -- the same operations in EVEX
// encodings -- so that these kernels are tested on every AVX512-VNNI CPU, where the VEX ones may not run.
#include <immintrin.h>

#include "kernels/kernels.h"

namespace pyattn::kernels {
namespace {

#include "kernels/x86_fields.inl"

inline __m256i dpbusd256(__m256i acc, __m256i u, __m256i a) {
#if defined(PYATTN_AVX_VNNI_EVEX)
    return _mm256_dpbusd_epi32(acc, u, a);
#else
    return _mm256_dpbusd_avx_epi32(acc, u, a);
#endif
}

#include "kernels/x86_int8_vi.inl"

// int8_kernels.inl's interface on 256-bit registers and vpdpbusd's quads (as int8_vnni.cpp's on 512-bit ones): B's sign
// bit flipped as it is loaded, each block's sums started at -128 sum a.
struct VI : ViFloat256 {
    static constexpr int W = 8, kGroup = 4;
    using aval = int8_t;
    using ireg = __m256i;
    using breg = __m256i;
    using areg = __m256i;
    static ireg start(const int32_t* ta, int64_t idx) { return _mm256_set1_epi32(-128 * ta[idx]); }
    static breg load_b(const int8_t* p) {
        return _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)),
                                _mm256_set1_epi8(static_cast<char>(0x80)));
    }
    static areg bcast_a(const int8_t* p) {
        int32_t v;
        __builtin_memcpy(&v, p, sizeof v);
        return _mm256_set1_epi32(v);
    }
    static ireg madd(ireg acc, areg a, breg b) { return dpbusd256(acc, b, a); }
    static void pin(ireg& acc) { asm("" : "+x"(acc)); }
};

#include "kernels/int8_kernels.inl"

#include "kernels/q4_sums_vnni.inl"  // (the block sums, before the tiles that use them)

#include "kernels/q4_kernels.inl"

// The avx2 set with these int8 and block kernels: int8 in 2 x 32 tiles (8 int32 sums, 4 panel registers and A's
// broadcast quad: 13 of 16 registers, the float sums on the stack, as the avx2 set's) and 6 x 16 slices for products
// of up to 6 rows; the quantizers are the avx2 set's (the same values on every set).
KernelSet make_set(const char* name) {
    KernelSet k = avx2_kernel_set();
    k.name = name;
    Int8Kernels i8 = make_int8_kernels<2, 4, 6, 2>();
    i8.quantize = k.i8.quantize;
    i8.quantize8 = k.i8.quantize8;
    k.i8 = i8;
    k.q4 = make_q4_kernels<Q4SumsVnni<4>>();
    return k;
}

}  // namespace

#if defined(PYATTN_AVX_VNNI_EVEX)
KernelSet& avx_vnni_evex_kernel_set() {
    static KernelSet ks = make_set("avx_vnni_evex");
    return ks;
}
#else
KernelSet& avx_vnni_kernel_set() {
    static KernelSet ks = make_set("avx_vnni");
    return ks;
}
#endif

}  // namespace pyattn::kernels

// Scalar kernel set: the portable reference every vector ISA is tested against. Compiled with the
// baseline flags only; transcendental functions come from libm, so it is also the accurate path.
#include <cstring>

#include "kernels/half.h"
#include "kernels/kernels.h"

namespace pyattn::kernels {
namespace {

// Never called (kTranspose8 is false); declared so the generic packs compile.
inline void transpose8x8(const float*, int64_t, float*, int64_t, float = 1.0f) {}
inline void transpose4x8(const float*, int64_t, float*, int64_t, float = 1.0f) {}

struct V {
    using reg = float;
    static constexpr bool kTranspose8 = false;  // transpose8x8 and transpose4x8 available
    static constexpr int kDotRows = 2;          // rows of A per pass of the dot kernel
    static constexpr int W = 1;
    static reg zero() { return 0.0f; }
    static reg set1(float x) { return x; }
    static reg load(const float* p) { return *p; }
    static reg load_h(const uint16_t* p) { return half_to_float(*p); }
    static void store_h(uint16_t* p, reg v) { *p = float_to_half(v); }
    static reg load_bf16(const uint16_t* p) { return bf16_to_float(*p); }
    static reg round_bf16(reg v) { return bf16_to_float(float_to_bf16(v)); }
    static void store(float* p, reg v) { *p = v; }
    static reg load_n(const float* p, int64_t n) { return n > 0 ? *p : 0.0f; }
    static void store_n(float* p, reg v, int64_t n) {
        if (n > 0) *p = v;
    }
    static reg fmadd(reg a, reg b, reg c) { return a * b + c; }
    static reg add(reg a, reg b) { return a + b; }
    static reg sub(reg a, reg b) { return a - b; }
    static reg mul(reg a, reg b) { return a * b; }
    static reg div(reg a, reg b) { return a / b; }
    static reg max(reg a, reg b) { return a > b ? a : b; }
    static reg min(reg a, reg b) { return a < b ? a : b; }
    static float hsum(reg v) { return v; }
    static float hmax(reg v) { return v; }
    static reg exp(reg x) { return __builtin_expf(x); }
    static reg erf(reg x) { return __builtin_erff(x); }
    static reg tanh(reg x) { return __builtin_tanhf(x); }
    static reg mask_neg_inf(reg s, const uint8_t* m) { return *m ? -__builtin_inff() : s; }
};

#include "kernels/generic_kernels.inl"

}  // namespace

KernelSet& scalar_kernel_set() {
    // 4 x 4 tile: the reference path is about being obviously right, not fast.
    static KernelSet ks =
        make_kernel_set<4, 4, 4, 4>("scalar", 64, 256, 1024, scalar_int8_kernels(), scalar_q4_kernels());
    return ks;
}

}  // namespace pyattn::kernels

// Scalar int8 kernels: the reference the vector sets must match bit for bit. Compiled with -ffp-contract=off.
#include "kernels/kernels.h"

namespace pyattn::kernels {
namespace {

struct VI {
    static constexpr int W = 1, kGroup = 2;
    using aval = int16_t;
    using ireg = int32_t;
    struct breg {
        int32_t b0, b1;
    };
    struct areg {
        int32_t a0, a1;
    };
    static ireg start(const int32_t*, int64_t) { return 0; }
    static breg load_b(const int8_t* p) { return {p[0], p[1]}; }
    static areg bcast_a(const int16_t* p) { return {p[0], p[1]}; }
    static ireg madd(ireg acc, areg a, breg b) { return acc + (a.a0 * b.b0 + a.a1 * b.b1); }
    static void pin(ireg&) {}
    static void prefetch(const int8_t*, int64_t, int64_t) {}
    using freg = float;
    static freg fzero() { return 0.0f; }
    static freg fload(const float* p) { return *p; }
    static void fstore(float* p, freg v) { *p = v; }
    static freg fset1(float x) { return x; }
    static freg fmul(freg a, freg b) { return a * b; }
    static freg fadd(freg a, freg b) { return a + b; }
    static freg cvt(ireg a) { return static_cast<float>(a); }
    static freg fma(freg a, freg b, freg c) { return __builtin_fmaf(a, b, c); }
    static float absmax(const float* x, int64_t k, bool* finite) {
        float m = 0.0f;
        bool ok = true;
        for (int64_t p = 0; p < k; ++p) {
            const float a = __builtin_fabsf(x[p]);
            ok = ok && a <= 3.40282347e38f;  // false for inf and NaN
            m = a > m ? a : m;
        }
        *finite = ok;
        return m;
    }
    static void quantize_row(const float* x, int64_t k, int16_t* q, float inv) {
        for (int64_t p = 0; p < k; ++p) {
            float v = x[p] * inv;
            if (!(v >= -127.0f)) v = -127.0f;  // NaN too, as the vector sets' conversion gives
            if (v > 127.0f) v = 127.0f;
            q[p] = static_cast<int16_t>(__builtin_rintf(v));
        }
    }
};

#include "kernels/int8_kernels.inl"

}  // namespace

Int8Kernels scalar_int8_kernels() { return make_int8_kernels<4, 4>(); }

}  // namespace pyattn::kernels

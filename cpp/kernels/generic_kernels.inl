// Kernel bodies written once against a small vector interface `V` and instantiated per ISA.
//
// This file is #included inside an anonymous namespace of each cpp/kernels/<isa>/ translation unit,
// after that unit has defined `struct V` (its registers and intrinsics). Everything here therefore gets
// internal linkage per ISA: an AVX-512 instantiation can never be merged by the linker into the scalar
// path (the classic ODR hazard of compiling one template under several -m flags).
//
// V provides: reg, W (lanes), zero, set1, load, load_h / load_bf16 (W 16-bit floats widened), round_bf16 (each
// lane rounded to the nearest bfloat16, NaN kept), store, load_n, store_n (first n lanes, n <= W, the rest
// read as 0 / left untouched), fmadd(a, b, c) = a*b + c, add, sub, mul, div, max, min, hsum, hmax,
// exp, erf, tanh, and mask_neg_inf(s, bytes) (lanes whose byte is nonzero become -inf).

constexpr float kNegInf = -__builtin_inff();

// ---------------------------------------------------------------------------------------------
// GEMM micro-kernel: an MR x (NV * W) register tile, rank-1 updates over k.
// ---------------------------------------------------------------------------------------------
template <int MR, int NV>
inline void store_tile(typename V::reg (&acc)[MR][NV], float* c, int64_t ldc, float beta) {
    if (beta == 0.0f) {
#pragma GCC unroll 16
        for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
            for (int j = 0; j < NV; ++j) V::store(c + i * ldc + j * V::W, acc[i][j]);
    } else if (beta == 1.0f) {
#pragma GCC unroll 16
        for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
            for (int j = 0; j < NV; ++j)
                V::store(c + i * ldc + j * V::W, V::add(acc[i][j], V::load(c + i * ldc + j * V::W)));
    } else {
        const typename V::reg vb = V::set1(beta);
#pragma GCC unroll 16
        for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
            for (int j = 0; j < NV; ++j)
                V::store(c + i * ldc + j * V::W, V::fmadd(vb, V::load(c + i * ldc + j * V::W), acc[i][j]));
    }
}

template <int MR, int NV>
void micro_kernel(int64_t k, const float* __restrict a, const float* __restrict b, int64_t ldb, float* __restrict c,
                  int64_t ldc, float beta) {
    typename V::reg acc[MR][NV];
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
        for (int j = 0; j < NV; ++j) acc[i][j] = V::zero();
    for (int64_t p = 0; p < k; ++p) {
        typename V::reg bv[NV];
#pragma GCC unroll 8
        for (int j = 0; j < NV; ++j) bv[j] = V::load(b + j * V::W);
#pragma GCC unroll 16
        for (int i = 0; i < MR; ++i) {
            const typename V::reg av = V::set1(a[i]);
#pragma GCC unroll 8
            for (int j = 0; j < NV; ++j) acc[i][j] = V::fmadd(av, bv[j], acc[i][j]);
        }
        a += MR;
        b += ldb;
    }
    store_tile<MR, NV>(acc, c, ldc, beta);
}

// B element formats: how a panel element is loaded into a float register.
struct FmtF32 {
    using T = float;
    static typename V::reg load(const float* p) { return V::load(p); }
};
struct FmtF16 {
    using T = uint16_t;
    static typename V::reg load(const uint16_t* p) { return V::load_h(p); }
};
struct FmtBF16 {
    using T = uint16_t;
    static typename V::reg load(const uint16_t* p) { return V::load_bf16(p); }
};

// Same tile, A read in place (row stride lda) for m = M rows: the small-M (decode) path. B in format Fmt.
template <int M, int NV, class Fmt>
void rows_kernel_m(int64_t k, const float* __restrict a, int64_t lda, const typename Fmt::T* __restrict b, int64_t ldb,
                   float* __restrict c, int64_t ldc, float beta) {
    typename V::reg acc[M][NV];
#pragma GCC unroll 16
    for (int i = 0; i < M; ++i)
#pragma GCC unroll 8
        for (int j = 0; j < NV; ++j) acc[i][j] = V::zero();
    for (int64_t p = 0; p < k; ++p) {
        typename V::reg bv[NV];
#pragma GCC unroll 8
        for (int j = 0; j < NV; ++j) bv[j] = Fmt::load(b + p * ldb + j * V::W);
#pragma GCC unroll 16
        for (int i = 0; i < M; ++i) {
            const typename V::reg av = V::set1(a[i * lda + p]);
#pragma GCC unroll 8
            for (int j = 0; j < NV; ++j) acc[i][j] = V::fmadd(av, bv[j], acc[i][j]);
        }
    }
    store_tile<M, NV>(acc, c, ldc, beta);
}

template <int MR, int NV, class Fmt = FmtF32, int M = MR>
void rows_kernel_dispatch(int64_t m, int64_t k, const float* a, int64_t lda, const typename Fmt::T* b, int64_t ldb,
                          float* c, int64_t ldc, float beta) {
    if constexpr (M >= 1) {
        if (m == M) return rows_kernel_m<M, NV, Fmt>(k, a, lda, b, ldb, c, ldc, beta);
        return rows_kernel_dispatch<MR, NV, Fmt, M - 1>(m, k, a, lda, b, ldb, c, ldc, beta);
    }
}

template <class Fmt, float (*Scalar)(uint16_t)>
void widen16(const uint16_t* x, float* y, int64_t n) {
    int64_t i = 0;
    for (; i + V::W <= n; i += V::W) V::store(y + i, Fmt::load(x + i));
    for (; i < n; ++i) y[i] = Scalar(x[i]);
}

void round_bf16(const float* x, float* y, int64_t n) {
    int64_t i = 0;
    for (; i + V::W <= n; i += V::W) V::store(y + i, V::round_bf16(V::load(x + i)));
    for (; i < n; ++i) y[i] = bf16_to_float(float_to_bf16(x[i]));
}

// ---------------------------------------------------------------------------------------------
// Dot-product kernel: C = A W^T (+ beta C) with W rows contiguous; vectorised along k.
// ---------------------------------------------------------------------------------------------
template <int MI, int NJ>
inline void dot_block(int64_t k, const float* a, int64_t lda, const float* w, int64_t ldw, float* c, int64_t ldc,
                      float beta) {
    typename V::reg acc[MI][NJ];
#pragma GCC unroll 4
    for (int i = 0; i < MI; ++i)
#pragma GCC unroll 4
        for (int j = 0; j < NJ; ++j) acc[i][j] = V::zero();
    int64_t p = 0;
    for (; p + V::W <= k; p += V::W) {
        typename V::reg wv[NJ];
#pragma GCC unroll 4
        for (int j = 0; j < NJ; ++j) wv[j] = V::load(w + j * ldw + p);
#pragma GCC unroll 4
        for (int i = 0; i < MI; ++i) {
            const typename V::reg av = V::load(a + i * lda + p);
#pragma GCC unroll 4
            for (int j = 0; j < NJ; ++j) acc[i][j] = V::fmadd(av, wv[j], acc[i][j]);
        }
    }
    if (p < k) {
        const int64_t r = k - p;
        typename V::reg wv[NJ];
#pragma GCC unroll 4
        for (int j = 0; j < NJ; ++j) wv[j] = V::load_n(w + j * ldw + p, r);
#pragma GCC unroll 4
        for (int i = 0; i < MI; ++i) {
            const typename V::reg av = V::load_n(a + i * lda + p, r);
#pragma GCC unroll 4
            for (int j = 0; j < NJ; ++j) acc[i][j] = V::fmadd(av, wv[j], acc[i][j]);
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < MI; ++i)
#pragma GCC unroll 4
        for (int j = 0; j < NJ; ++j) {
            const float s = V::hsum(acc[i][j]);
            float* dst = c + i * ldc + j;
            *dst = beta == 0.0f ? s : s + beta * *dst;
        }
}

// Rows of A are taken kDotRows at a time (V::kDotRows: as many as the register file holds with two W
// rows), so that W -- the large operand, a weight or the keys -- streams from memory once per kDotRows
// rows of A instead of once per row.
template <int MI>
void dot_rows(int64_t n, int64_t k, const float* a, int64_t lda, const float* w, int64_t ldw, float* c, int64_t ldc,
              float beta) {
    // Few rows of A leave registers for more W rows: more independent FMA chains and memory streams.
    constexpr int NJ = MI <= 2 ? 4 : 2;
    int64_t j = 0;
    for (; j + NJ <= n; j += NJ) dot_block<MI, NJ>(k, a, lda, w + j * ldw, ldw, c + j, ldc, beta);
    for (; j + 2 <= n; j += 2) dot_block<MI, 2>(k, a, lda, w + j * ldw, ldw, c + j, ldc, beta);
    if (j < n) dot_block<MI, 1>(k, a, lda, w + j * ldw, ldw, c + j, ldc, beta);
}

template <int MI = V::kDotRows>
void dot_rows_dispatch(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* w, int64_t ldw,
                       float* c, int64_t ldc, float beta) {
    if constexpr (MI >= 1) {
        if (m == MI) return dot_rows<MI>(n, k, a, lda, w, ldw, c, ldc, beta);
        return dot_rows_dispatch<MI - 1>(m, n, k, a, lda, w, ldw, c, ldc, beta);
    }
}

void dot_kernel(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* w, int64_t ldw, float* c,
                int64_t ldc, float beta) {
    for (int64_t i = 0; i < m; i += V::kDotRows) {
        const int64_t mi = m - i < V::kDotRows ? m - i : V::kDotRows;
        dot_rows_dispatch(mi, n, k, a + i * lda, lda, w, ldw, c + i * ldc, ldc, beta);
    }
}

// ---------------------------------------------------------------------------------------------
// Packing a B panel from a transposed B (weights [N, K]): 8 x 8 register transposes where V has them.
// ---------------------------------------------------------------------------------------------
void pack_bt(const float* w, int64_t ldw, int64_t kc, int64_t cols, int nr, float* panel) {
    int64_t p = 0;
    if constexpr (V::kTranspose8) {
        const int64_t cols8 = cols / 8 * 8;
        for (; p + 8 <= kc; p += 8) {
            for (int64_t j = 0; j < cols8; j += 8) transpose8x8(w + j * ldw + p, ldw, panel + p * nr + j, nr);
            for (int64_t j = cols8; j < cols; ++j)
                for (int64_t q = p; q < p + 8; ++q) panel[q * nr + j] = w[j * ldw + q];
        }
    }
    // Remaining depth, a cache line of each source row at a time (keeps the written corner in L1).
    for (int64_t pb = p; pb < kc; pb += 16) {
        const int64_t pe = pb + 16 < kc ? pb + 16 : kc;
        for (int64_t j = 0; j < cols; ++j)
            for (int64_t q = pb; q < pe; ++q) panel[q * nr + j] = w[j * ldw + q];
    }
    for (int64_t q = 0; q < kc; ++q)
        for (int64_t j = cols; j < nr; ++j) panel[q * nr + j] = 0.0f;
}

// Packing A into MR-row panels (kernels.h: pack_a). A whole panel goes 8 k at a time through register transposes of
// 8 rows (4 where MR < 8), the last group of rows overlapping its predecessor when MR is not a multiple of the group
// (MR 12: rows 0-7 and 4-11); the rest, and a last partial panel, element by element.
void pack_a(const float* a, int64_t lda, int64_t mc, int64_t kc, int mr, float* dst, float scale) {
    for (int64_t r = 0; r * mr < mc; ++r) {
        float* panel = dst + r * kc * mr;
        const float* rows = a + r * mr * lda;
        const int64_t m = mc - r * mr < mr ? mc - r * mr : mr;
        int64_t p = 0;
        if constexpr (V::kTranspose8) {
            if (m == mr && mr >= 4) {
                const int g = mr >= 8 ? 8 : 4;
                for (; p + 8 <= kc; p += 8)
                    for (int i0 = 0; i0 < mr; i0 += g) {
                        const int i = i0 + g <= mr ? i0 : mr - g;
                        if (g == 8)
                            transpose8x8(rows + i * lda + p, lda, panel + p * mr + i, mr, scale);
                        else
                            transpose4x8(rows + i * lda + p, lda, panel + p * mr + i, mr, scale);
                    }
            }
        }
        for (; p < kc; ++p) {
            for (int64_t i = 0; i < m; ++i) panel[p * mr + i] = scale * rows[i * lda + p];
            for (int64_t i = m; i < mr; ++i) panel[p * mr + i] = 0.0f;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Row primitives.
// ---------------------------------------------------------------------------------------------
float row_max(const float* x, int64_t n) {
    typename V::reg m0 = V::set1(kNegInf), m1 = m0;
    int64_t j = 0;
    for (; j + 2 * V::W <= n; j += 2 * V::W) {
        m0 = V::max(m0, V::load(x + j));
        m1 = V::max(m1, V::load(x + j + V::W));
    }
    for (; j + V::W <= n; j += V::W) m0 = V::max(m0, V::load(x + j));
    float m = V::hmax(V::max(m0, m1));
    for (; j < n; ++j) m = x[j] > m ? x[j] : m;
    return m;
}

float exp_sum(const float* x, float* y, int64_t n, float shift) {
    const typename V::reg vs = V::set1(shift);
    typename V::reg s0 = V::zero(), s1 = V::zero();
    int64_t j = 0;
    for (; j + 2 * V::W <= n; j += 2 * V::W) {
        const typename V::reg e0 = V::exp(V::sub(V::load(x + j), vs));
        const typename V::reg e1 = V::exp(V::sub(V::load(x + j + V::W), vs));
        V::store(y + j, e0);
        V::store(y + j + V::W, e1);
        s0 = V::add(s0, e0);
        s1 = V::add(s1, e1);
    }
    for (; j < n; j += V::W) {
        const int64_t r = n - j < V::W ? n - j : V::W;
        // Lanes past n load 0 and would add exp(0 - shift): zero them before summing.
        const typename V::reg e = V::exp(V::sub(V::load_n(x + j, r), vs));
        V::store_n(y + j, e, r);
        s0 = V::add(s0, V::load_n(y + j, r));
    }
    return V::hsum(V::add(s0, s1));
}

void scale_row(float* x, int64_t n, float s) {
    const typename V::reg vs = V::set1(s);
    int64_t j = 0;
    for (; j + V::W <= n; j += V::W) V::store(x + j, V::mul(V::load(x + j), vs));
    if (j < n) V::store_n(x + j, V::mul(V::load_n(x + j, n - j), vs), n - j);
}

void softcap_row(float* x, int64_t n, float cap) {
    const typename V::reg vc = V::set1(cap), vi = V::set1(1.0f / cap);
    for (int64_t j = 0; j < n; j += V::W) {
        const int64_t r = n - j < V::W ? n - j : V::W;
        V::store_n(x + j, V::mul(V::tanh(V::mul(V::load_n(x + j, r), vi)), vc), r);
    }
}

void add_scalar(const float* x, float* y, int64_t n, float s) {
    const typename V::reg vs = V::set1(s);
    int64_t j = 0;
    for (; j + V::W <= n; j += V::W) V::store(y + j, V::add(V::load(x + j), vs));
    if (j < n) V::store_n(y + j, V::add(V::load_n(x + j, n - j), vs), n - j);
}

void axpy(float* y, const float* x, int64_t n, float a) {
    const typename V::reg va = V::set1(a);
    int64_t j = 0;
    for (; j + V::W <= n; j += V::W) V::store(y + j, V::fmadd(va, V::load(x + j), V::load(y + j)));
    if (j < n) V::store_n(y + j, V::fmadd(va, V::load_n(x + j, n - j), V::load_n(y + j, n - j)), n - j);
}

void add_row(float* s, const float* t, int64_t n) {
    int64_t j = 0;
    for (; j + V::W <= n; j += V::W) V::store(s + j, V::add(V::load(s + j), V::load(t + j)));
    if (j < n) V::store_n(s + j, V::add(V::load_n(s + j, n - j), V::load_n(t + j, n - j)), n - j);
}

void mask_bool(float* s, const uint8_t* masked, int64_t n) {
    int64_t j = 0;
    for (; j + V::W <= n; j += V::W) V::store(s + j, V::mask_neg_inf(V::load(s + j), masked + j));
    for (; j < n; ++j)
        if (masked[j]) s[j] = kNegInf;
}

void layer_norm_row(const float* x, float* y, const float* w, const float* b, int64_t n, float eps) {
    // Two passes (mean, then the mean of squared deviations): no cancellation for large offsets. The
    // mean itself is summed relative to x[0], so that a large common offset does not swamp the digits
    // that carry the spread.
    const float shift = x[0];
    const typename V::reg vshift = V::set1(shift);
    typename V::reg m0 = V::zero();
    for (int64_t j = 0; j < n; j += V::W) {
        const int64_t r = n - j < V::W ? n - j : V::W;
        float tmp[V::W];
        V::store(tmp, V::sub(V::load_n(x + j, r), vshift));
        m0 = V::add(m0, V::load_n(tmp, r));
    }
    const float mean = shift + V::hsum(m0) / (float)n;
    const typename V::reg vm = V::set1(mean);
    typename V::reg q0 = V::zero(), q1 = V::zero();
    int64_t j = 0;
    for (; j + 2 * V::W <= n; j += 2 * V::W) {
        const typename V::reg d0 = V::sub(V::load(x + j), vm), d1 = V::sub(V::load(x + j + V::W), vm);
        q0 = V::fmadd(d0, d0, q0);
        q1 = V::fmadd(d1, d1, q1);
    }
    for (; j < n; j += V::W) {
        const int64_t r = n - j < V::W ? n - j : V::W;
        const typename V::reg d = V::sub(V::load_n(x + j, r), vm);
        // Lanes past n hold 0 - mean: mask them by reloading through load_n of the squared deviation.
        float tmp[V::W];
        V::store(tmp, V::mul(d, d));
        q0 = V::add(q0, V::load_n(tmp, r));
    }
    const float var = V::hsum(V::add(q0, q1)) / (float)n;
    const float rstd = 1.0f / __builtin_sqrtf(var + eps);
    const typename V::reg vr = V::set1(rstd);
    for (j = 0; j < n; j += V::W) {
        const int64_t r = n - j < V::W ? n - j : V::W;
        typename V::reg v = V::mul(V::sub(V::load_n(x + j, r), vm), vr);
        if (w) v = V::mul(v, V::load_n(w + j, r));
        if (b) v = V::add(v, V::load_n(b + j, r));
        V::store_n(y + j, v, r);
    }
}

void rms_norm_row(const float* x, float* y, const float* w, int64_t n, float eps) {
    typename V::reg q0 = V::zero(), q1 = V::zero();
    int64_t j = 0;
    for (; j + 2 * V::W <= n; j += 2 * V::W) {
        const typename V::reg a = V::load(x + j), b = V::load(x + j + V::W);
        q0 = V::fmadd(a, a, q0);
        q1 = V::fmadd(b, b, q1);
    }
    for (; j < n; j += V::W) {  // lanes past n load 0 and add nothing
        const int64_t r = n - j < V::W ? n - j : V::W;
        const typename V::reg a = V::load_n(x + j, r);
        q0 = V::fmadd(a, a, q0);
    }
    const float rms = 1.0f / __builtin_sqrtf(V::hsum(V::add(q0, q1)) / (float)n + eps);
    const typename V::reg vr = V::set1(rms);
    for (j = 0; j < n; j += V::W) {
        const int64_t r = n - j < V::W ? n - j : V::W;
        typename V::reg v = V::mul(V::load_n(x + j, r), vr);
        if (w) v = V::mul(v, V::load_n(w + j, r));
        V::store_n(y + j, v, r);
    }
}

void rotate_pairs(float* a, float* b, const float* c, const float* s, int64_t n) {
    for (int64_t j = 0; j < n; j += V::W) {
        const int64_t r = n - j < V::W ? n - j : V::W;
        const typename V::reg x = V::load_n(a + j, r), y = V::load_n(b + j, r);
        const typename V::reg vc = V::load_n(c + j, r), vs = V::load_n(s + j, r);
        V::store_n(a + j, V::sub(V::mul(x, vc), V::mul(y, vs)), r);
        V::store_n(b + j, V::fmadd(x, vs, V::mul(y, vc)), r);
    }
}

// max returns its second operand when either is NaN: x second, so that relu(NaN) is NaN (as torch), not 0.
inline typename V::reg act_relu(typename V::reg x) { return V::max(V::zero(), x); }
inline typename V::reg act_gelu_erf(typename V::reg x) {
    // 0.5 x (1 + erf(x / sqrt 2))
    const typename V::reg h = V::mul(x, V::set1(0.5f));
    return V::fmadd(h, V::erf(V::mul(x, V::set1(0.70710678118654752f))), h);
}
inline typename V::reg act_gelu_tanh(typename V::reg x) {
    // 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
    const typename V::reg x3 = V::mul(V::mul(x, x), x);
    const typename V::reg u = V::mul(V::set1(0.7978845608028654f), V::fmadd(V::set1(0.044715f), x3, x));
    const typename V::reg h = V::mul(x, V::set1(0.5f));
    return V::fmadd(h, V::tanh(u), h);
}
inline typename V::reg act_silu(typename V::reg x) {
    // x * sigmoid(x) with sigmoid = exp(min(x, 0)) / (1 + exp(-|x|)): no exp of a large positive number,
    // whose clamped value would leave silu(-1e30) at -4e-9 instead of -0.
    const typename V::reg num = V::exp(V::min(x, V::zero()));
    const typename V::reg den = V::add(V::set1(1.0f), V::exp(V::min(x, V::sub(V::zero(), x))));
    return V::mul(x, V::div(num, den));
}

template <typename F>
inline void gate_mul_impl(const float* g, const float* u, float* y, int64_t n, F f) {
    int64_t j = 0;
    for (; j + V::W <= n; j += V::W) V::store(y + j, V::mul(f(V::load(g + j)), V::load(u + j)));
    if (j < n) V::store_n(y + j, V::mul(f(V::load_n(g + j, n - j)), V::load_n(u + j, n - j)), n - j);
}

void gate_mul(const float* g, const float* u, float* y, int64_t n, Activation act) {
    switch (act) {
        case Activation::none:
            return gate_mul_impl(g, u, y, n, [](typename V::reg v) { return v; });
        case Activation::relu:
            return gate_mul_impl(g, u, y, n, act_relu);
        case Activation::gelu_erf:
            return gate_mul_impl(g, u, y, n, act_gelu_erf);
        case Activation::gelu_tanh:
            return gate_mul_impl(g, u, y, n, act_gelu_tanh);
        case Activation::silu:
            return gate_mul_impl(g, u, y, n, act_silu);
    }
}

template <typename F>
inline void bias_act_impl(const float* x, float* y, const float* bias, int64_t n, F f) {
    int64_t j = 0;
    for (; j + V::W <= n; j += V::W) {
        typename V::reg v = V::load(x + j);
        if (bias) v = V::add(v, V::load(bias + j));
        V::store(y + j, f(v));
    }
    if (j < n) {
        typename V::reg v = V::load_n(x + j, n - j);
        if (bias) v = V::add(v, V::load_n(bias + j, n - j));
        V::store_n(y + j, f(v), n - j);
    }
}

void bias_act(const float* x, float* y, const float* bias, int64_t n, Activation act) {
    switch (act) {
        case Activation::none:
            return bias_act_impl(x, y, bias, n, [](typename V::reg v) { return v; });
        case Activation::relu:
            return bias_act_impl(x, y, bias, n, act_relu);
        case Activation::gelu_erf:
            return bias_act_impl(x, y, bias, n, act_gelu_erf);
        case Activation::gelu_tanh:
            return bias_act_impl(x, y, bias, n, act_gelu_tanh);
        case Activation::silu:
            return bias_act_impl(x, y, bias, n, act_silu);
    }
}

inline typename V::reg sigmoid(typename V::reg x) {
    // 1 / (1 + e^-x) = (1 + tanh(x / 2)) / 2: no overflow for large |x|, and one polynomial for both gates.
    const typename V::reg h = V::set1(0.5f);
    return V::fmadd(h, V::tanh(V::mul(x, h)), h);
}

void gru_gates(const float* gi, const float* gh, float* h, int64_t n) {
    auto step = [&](int64_t j, auto load, auto store) {
        const typename V::reg r = sigmoid(V::add(load(gi + j), load(gh + j)));
        const typename V::reg z = sigmoid(V::add(load(gi + n + j), load(gh + n + j)));
        const typename V::reg c = V::tanh(V::fmadd(r, load(gh + 2 * n + j), load(gi + 2 * n + j)));
        store(h + j, V::fmadd(z, V::sub(load(h + j), c), c));  // c + z (h - c)
    };
    int64_t j = 0;
    for (; j + V::W <= n; j += V::W)
        step(j, [](const float* p) { return V::load(p); }, [](float* p, typename V::reg v) { V::store(p, v); });
    if (j < n) {
        const int64_t r = n - j;
        step(
            j, [r](const float* p) { return V::load_n(p, r); },
            [r](float* p, typename V::reg v) { V::store_n(p, v, r); });
    }
}

// ---------------------------------------------------------------------------------------------
// Additive attention scores: out[j] = sum_h v[h] tanh(a[h] + b_j[h]).
// ---------------------------------------------------------------------------------------------
// NK keys per pass: the query and v vectors are loaded once for NK keys, and the NK tanh evaluations are
// independent chains the core can overlap (tanh is ~20 dependent operations deep). chk[k] accumulates
// s * 0, which is 0 for finite s and NaN for NaN or +-inf: tanh alone would turn inf into 1 and, in the
// vector sets, NaN into +-1 (max/min return the non-NaN operand), hiding a bad input.
template <int NK>
inline void tanh_dot_block(const float* a, const float* b, int64_t ldb, const float* v, int64_t n, float* out) {
    typename V::reg acc[NK], chk[NK];
#pragma GCC unroll 4
    for (int k = 0; k < NK; ++k) acc[k] = chk[k] = V::zero();
    const typename V::reg zero = V::zero();
    int64_t h = 0;
    for (; h + V::W <= n; h += V::W) {
        const typename V::reg av = V::load(a + h), vv = V::load(v + h);
#pragma GCC unroll 4
        for (int k = 0; k < NK; ++k) {
            const typename V::reg s = V::add(av, V::load(b + k * ldb + h));
            acc[k] = V::fmadd(vv, V::tanh(s), acc[k]);
            chk[k] = V::fmadd(s, zero, chk[k]);
        }
    }
    if (h < n) {  // lanes past n load 0: tanh(0) * 0 adds nothing
        const int64_t r = n - h;
        const typename V::reg av = V::load_n(a + h, r), vv = V::load_n(v + h, r);
#pragma GCC unroll 4
        for (int k = 0; k < NK; ++k) {
            const typename V::reg s = V::add(av, V::load_n(b + k * ldb + h, r));
            acc[k] = V::fmadd(vv, V::tanh(s), acc[k]);
            chk[k] = V::fmadd(s, zero, chk[k]);
        }
    }
#pragma GCC unroll 4
    for (int k = 0; k < NK; ++k) out[k] = V::hsum(V::add(acc[k], chk[k]));
}

void tanh_dot(const float* a, const float* b, int64_t ldb, int64_t m, const float* v, int64_t n, float* out) {
    int64_t j = 0;
    for (; j + 4 <= m; j += 4) tanh_dot_block<4>(a, b + j * ldb, ldb, v, n, out + j);
    for (; j + 2 <= m; j += 2) tanh_dot_block<2>(a, b + j * ldb, ldb, v, n, out + j);
    if (j < m) tanh_dot_block<1>(a, b + j * ldb, ldb, v, n, out + j);
}

double fma_loop(int64_t iters) {
    constexpr int kChains = 12;  // > FMA latency x pipes on current x86 cores
    typename V::reg acc[kChains];
    for (int i = 0; i < kChains; ++i) acc[i] = V::set1(1.0f + 1e-3f * i);
    const typename V::reg m = V::set1(0.9999999f), a = V::set1(1e-7f);
    for (int64_t t = 0; t < iters; t += 4) {
#pragma GCC unroll 4
        for (int u = 0; u < 4; ++u)
#pragma GCC unroll 12
            for (int i = 0; i < kChains; ++i) acc[i] = V::fmadd(acc[i], m, a);
    }
    typename V::reg s = V::zero();
    for (int i = 0; i < kChains; ++i) s = V::add(s, acc[i]);
    volatile float sink = V::hsum(s);
    (void)sink;
    return 2.0 * kChains * V::W * (double)iters;
}

float stream_sum(const float* x, int64_t n) {
    typename V::reg s0 = V::zero(), s1 = V::zero(), s2 = V::zero(), s3 = V::zero();
    int64_t j = 0;
    for (; j + 4 * V::W <= n; j += 4 * V::W) {
        s0 = V::add(s0, V::load(x + j));
        s1 = V::add(s1, V::load(x + j + V::W));
        s2 = V::add(s2, V::load(x + j + 2 * V::W));
        s3 = V::add(s3, V::load(x + j + 3 * V::W));
    }
    float s = V::hsum(V::add(V::add(s0, s1), V::add(s2, s3)));
    for (; j < n; ++j) s += x[j];
    return s;
}

// ---------------------------------------------------------------------------------------------
// Decoding attention: one query row against n cached keys / values (rows of stride ld, read in place).
// ---------------------------------------------------------------------------------------------
// Rows of a KV cache are read from memory once per step, a few hundred bytes at a stride: left to the hardware
// prefetcher the loop waits on each of them, so both kernels prefetch the rows kAheadRows keys ahead.
constexpr int64_t kAheadRows = 16;

template <class T>
inline void prefetch_row(const T* row, int64_t d) {
    for (int64_t c = 0; c < d; c += 64 / static_cast<int64_t>(sizeof(T))) __builtin_prefetch(row + c);
}

// Cached K / V elements: float32, or float16 widened as they are loaded (a KV cache of half the bytes).
struct KvF32 {
    using T = float;
    static typename V::reg load(const float* p) { return V::load(p); }
    static typename V::reg load_n(const float* p, int64_t n) { return V::load_n(p, n); }
};
struct KvF16 {
    using T = uint16_t;
    static typename V::reg load(const uint16_t* p) { return V::load_h(p); }
    static typename V::reg load_n(const uint16_t* p, int64_t n) {  // a head size that is not a multiple of W
        uint16_t tmp[V::W] = {};
        for (int64_t i = 0; i < n; ++i) tmp[i] = p[i];
        return V::load_h(tmp);
    }
};

// s_r[j] = q_r . k_j for R query rows (the heads of a group) and NK keys: R x NK accumulators, each its own FMA
// chain (a head of 64 is 8 FMAs deep; fewer than ~8 chains leave the FMA pipes waiting), then a horizontal sum each.
template <int R, int NK, class Kv>
inline void score_block(const float* __restrict q, int64_t ldq, const typename Kv::T* __restrict k, int64_t ldk,
                        int64_t d, float* s, int64_t lds) {
    typename V::reg acc[R][NK];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
        for (int j = 0; j < NK; ++j) acc[r][j] = V::zero();
    for (int64_t p = 0; p < d; p += V::W) {
        const bool whole = p + V::W <= d;
        typename V::reg kv[NK];
#pragma GCC unroll 8
        for (int j = 0; j < NK; ++j) kv[j] = whole ? Kv::load(k + j * ldk + p) : Kv::load_n(k + j * ldk + p, d - p);
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) {
            const typename V::reg qv = whole ? V::load(q + r * ldq + p) : V::load_n(q + r * ldq + p, d - p);
#pragma GCC unroll 8
            for (int j = 0; j < NK; ++j) acc[r][j] = V::fmadd(qv, kv[j], acc[r][j]);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
        for (int j = 0; j < NK; ++j) s[r * lds + j] = V::hsum(acc[r][j]);
}

template <int R, int NK, class Kv>
void score_rows(const float* q, int64_t ldq, const typename Kv::T* k, int64_t ldk, int64_t n, int64_t d, float* s,
                int64_t lds) {
    int64_t j = 0;
    for (; j + NK <= n; j += NK) {
        for (int u = 0; u < NK; ++u)
            if (j + kAheadRows + u < n) prefetch_row(k + (j + kAheadRows + u) * ldk, d);
        score_block<R, NK, Kv>(q, ldq, k + j * ldk, ldk, d, s + j, lds);
    }
    for (; j < n; ++j) score_block<R, 1, Kv>(q, ldq, k + j * ldk, ldk, d, s + j, lds);
}

template <class Kv>
void attn_scores(int64_t m, const float* q, int64_t ldq, const typename Kv::T* k, int64_t ldk, int64_t n, int64_t d,
                 float* s, int64_t lds) {
    int64_t r = 0;
    for (; r + 3 <= m; r += 3) score_rows<3, 4, Kv>(q + r * ldq, ldq, k, ldk, n, d, s + r * lds, lds);
    if (m - r == 2) score_rows<2, 4, Kv>(q + r * ldq, ldq, k, ldk, n, d, s + r * lds, lds);
    if (m - r == 1) score_rows<1, 8, Kv>(q + r * ldq, ldq, k, ldk, n, d, s + r * lds, lds);
}

// o_r[0, dv) = sum_j p_r[j] v_j for R query rows sharing the values (grouped-query heads): each value row is loaded
// once for all R, and every (row, register) pair is its own FMA chain -- one row with the rows kernel has NR / W
// chains, latency-bound at ~4 cycles a key. Every key is summed, p = 0 included (a NaN in a masked value row still
// reaches the output, as in the GEMM the other paths use).
template <int R, int NV, class Kv>
inline void value_cols(const float* __restrict p, int64_t ldp, int64_t n, const typename Kv::T* __restrict v,
                       int64_t ldv, int64_t cols, float* __restrict o, int64_t ldo) {
    typename V::reg acc[R][NV];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
        for (int c = 0; c < NV; ++c) acc[r][c] = V::zero();
    const bool whole = cols == NV * V::W;
    for (int64_t j = 0; j < n; ++j) {
        const typename Kv::T* row = v + j * ldv;
        if (j + kAheadRows < n) prefetch_row(row + kAheadRows * ldv, cols);
        typename V::reg vr[NV];
#pragma GCC unroll 8
        for (int c = 0; c < NV; ++c) {
            const int64_t left = cols - c * V::W;
            vr[c] = whole || left >= V::W ? Kv::load(row + c * V::W)
                    : left > 0            ? Kv::load_n(row + c * V::W, left)
                                          : V::zero();
        }
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) {
            const typename V::reg pj = V::set1(p[r * ldp + j]);
#pragma GCC unroll 8
            for (int c = 0; c < NV; ++c) acc[r][c] = V::fmadd(pj, vr[c], acc[r][c]);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
        for (int c = 0; c < NV; ++c) {
            const int64_t left = cols - c * V::W;
            if (left >= V::W)
                V::store(o + r * ldo + c * V::W, acc[r][c]);
            else if (left > 0)
                V::store_n(o + r * ldo + c * V::W, acc[r][c], left);
        }
}

// R rows in column passes of NV registers.
template <int R, int NV, class Kv>
void value_rows(const float* p, int64_t ldp, int64_t n, const typename Kv::T* v, int64_t ldv, int64_t dv, float* o,
                int64_t ldo) {
    for (int64_t c0 = 0; c0 < dv; c0 += NV * V::W) {
        const int64_t cols = dv - c0 < NV * V::W ? dv - c0 : NV * V::W;
        value_cols<R, NV, Kv>(p, ldp, n, v + c0, ldv, cols, o + c0, ldo);
    }
}

template <class Kv>
void attn_values(int64_t m, const float* p, int64_t ldp, int64_t n, const typename Kv::T* v, int64_t ldv, int64_t dv,
                 float* o, int64_t ldo) {
    int64_t r = 0;
    for (; r + 3 <= m; r += 3) value_rows<3, 4, Kv>(p + r * ldp, ldp, n, v, ldv, dv, o + r * ldo, ldo);
    if (m - r == 2) value_rows<2, 6, Kv>(p + r * ldp, ldp, n, v, ldv, dv, o + r * ldo, ldo);
    if (m - r == 1) value_rows<1, 8, Kv>(p + r * ldp, ldp, n, v, ldv, dv, o + r * ldo, ldo);
}

// y = float16(x), round to nearest even (overflow: inf; NaN stays NaN): a row written into a float16 KV cache.
void narrow_f16(const float* x, uint16_t* y, int64_t n) {
    int64_t i = 0;
    for (; i + V::W <= n; i += V::W) V::store_h(y + i, V::load(x + i));
    for (; i < n; ++i) y[i] = float_to_half(x[i]);
}

template <int MR, int NV, int TALL, int TALL_NV>
KernelSet make_kernel_set(const char* name, int mc, int kc, int nc, Int8Kernels i8, Q4Kernels q4) {
    KernelSet ks{};
    ks.name = name;
    ks.blocking = GemmBlocking{MR, NV * V::W, mc, kc, nc};
    ks.micro = &micro_kernel<MR, NV>;
    ks.rows = &rows_kernel_dispatch<MR, NV>;
    ks.tall = &rows_kernel_dispatch<TALL, TALL_NV>;
    ks.half[static_cast<int>(HalfFormat::f16)] =
        HalfKernels{&rows_kernel_dispatch<MR, NV, FmtF16>, &rows_kernel_dispatch<TALL, TALL_NV, FmtF16>,
                    &widen16<FmtF16, half_to_float>};
    ks.half[static_cast<int>(HalfFormat::bf16)] =
        HalfKernels{&rows_kernel_dispatch<MR, NV, FmtBF16>, &rows_kernel_dispatch<TALL, TALL_NV, FmtBF16>,
                    &widen16<FmtBF16, bf16_to_float>};
    ks.round_bf16 = &round_bf16;
    ks.i8 = i8;
    ks.q4 = q4;
    ks.gru_gates = &gru_gates;
    ks.tall_rows = TALL;
    ks.tall_cols = TALL_NV * V::W;
    ks.dot = &dot_kernel;
    ks.attn_scores = &attn_scores<KvF32>;
    ks.attn_values = &attn_values<KvF32>;
    ks.attn_scores_f16 = &attn_scores<KvF16>;
    ks.attn_values_f16 = &attn_values<KvF16>;
    ks.narrow_f16 = &narrow_f16;
    ks.pack_bt = &pack_bt;
    ks.pack_a = &pack_a;
    ks.max = &row_max;
    ks.exp_sum = &exp_sum;
    ks.scale = &scale_row;
    ks.softcap = &softcap_row;
    ks.add_scalar = &add_scalar;
    ks.axpy = &axpy;
    ks.mask_bool = &mask_bool;
    ks.add = &add_row;
    ks.layer_norm = &layer_norm_row;
    ks.rms_norm = &rms_norm_row;
    ks.rotate = &rotate_pairs;
    ks.gate_mul = &gate_mul;
    ks.bias_act = &bias_act;
    ks.tanh_dot = &tanh_dot;
    ks.fma_loop = &fma_loop;
    ks.stream_sum = &stream_sum;
    return ks;
}

// int8 GEMM kernels written once against a small integer vector interface `VI` and instantiated per ISA (the
// contract is Int8Kernels in kernels.h). Included inside an anonymous namespace of the unit that defines `struct VI`;
// those units are compiled with -ffp-contract=off, so that no multiply and add is fused into an FMA that one kernel
// set would have and another not: the only fused step is the explicit fma.
//
// VI provides:
//   W                      columns per accumulator register (int32 lanes);
//   kGroup, aval           consecutive k of a column per panel group (Int8Kernels::kgroup) and A's value type: 2 and
//                          int16_t (int16 pairs) or 4 and int8_t (vpdpbusd's quads, A with its block sums);
//   ireg                   W int32 sums;
//   start(ta, idx)         a block's starting sums: 0 (pairs), -128 ta[idx] (quads: B's sign flipped, below);
//   freg, fzero(), fload(p), fstore(p, v), fset1(x), fmul, fadd, cvt(ireg): W floats;
//   fma(a, b, c)           a * b + c rounded once (the scalar set calls fmaf);
//   breg, load_b(p)        W columns x one group of the panel (W kGroup bytes at p), as madd reads them;
//   areg, bcast_a(p)       one group of A (kGroup values at p) in every lane;
//   madd(acc, a, b)        acc + the group's products per lane (quads: of b + 128, as load_b flips the sign bit);
//   pin(acc)               keeps acc in a register where it is (an empty asm on the vector sets, nothing on scalar);
//   prefetch(p, n, ahead)  hint: the n bytes at p + ahead will be read (or nothing; ahead 0: nothing);
// and, for the quantizers below (sets that use them):
//   absmax(x, k, &finite)  max |x[p]| over p < k, and whether every x[p] is finite;
//   quantize_row(x, k, q, inv)      q[p] = rint(clamp(x[p] * inv, -127, 127)) for p < k (NaN -> -127).

// M rows by NV registers of columns, in a panel PV registers wide (PV >= NV: the tall tile below reads part of one).
template <int M, int NV, int PV = NV>
void int8_tile_m(int64_t nb, const typename VI::aval* __restrict a, int64_t lda, const float* __restrict sa,
                 const int32_t* __restrict ta, int64_t ldsa, const int8_t* __restrict b, const float* __restrict sw,
                 float* __restrict c, int64_t ldc, const float* bias, int64_t ahead) {
    constexpr int NR = PV * VI::W, G = VI::kGroup, GROUPS = kQBlock / G;
    typename VI::freg sum[M][NV];
#pragma GCC unroll 16
    for (int i = 0; i < M; ++i)
#pragma GCC unroll 8
        for (int j = 0; j < NV; ++j) sum[i][j] = VI::fzero();
    for (int64_t blk = 0; blk < nb; ++blk) {
        typename VI::ireg acc[M][NV];
#pragma GCC unroll 16
        for (int i = 0; i < M; ++i)
#pragma GCC unroll 8
            for (int j = 0; j < NV; ++j) acc[i][j] = VI::start(ta, i * ldsa + blk);
        const typename VI::aval* ab = a + blk * kQBlock;
        VI::prefetch(b, GROUPS * NR * G, ahead);  // this block's panel bytes, `ahead` bytes on
#pragma GCC unroll 16
        for (int g = 0; g < GROUPS; ++g) {
            typename VI::breg bv[NV];
#pragma GCC unroll 8
            for (int j = 0; j < NV; ++j) bv[j] = VI::load_b(b + (g * NR + j * VI::W) * G);
#pragma GCC unroll 16
            for (int i = 0; i < M; ++i) {
                const typename VI::areg av = VI::bcast_a(ab + i * lda + G * g);
#pragma GCC unroll 8
                for (int j = 0; j < NV; ++j) {
                    acc[i][j] = VI::madd(acc[i][j], av, bv[j]);
                    VI::pin(acc[i][j]);
                }
            }
        }
        // this block's int32 sums, scaled by sa * sw, into the float sums
#pragma GCC unroll 8
        for (int j = 0; j < NV; ++j) {
            const typename VI::freg w = VI::fload(sw + j * VI::W);
#pragma GCC unroll 16
            for (int i = 0; i < M; ++i)
                sum[i][j] = VI::fma(VI::cvt(acc[i][j]), VI::fmul(VI::fset1(sa[i * ldsa + blk]), w), sum[i][j]);
        }
        b += GROUPS * NR * G;
        sw += NR;
    }
#pragma GCC unroll 16
    for (int i = 0; i < M; ++i)
#pragma GCC unroll 8
        for (int j = 0; j < NV; ++j) {
            typename VI::freg v = sum[i][j];
            if (bias) v = VI::fadd(v, VI::fload(bias + j * VI::W));
            VI::fstore(c + i * ldc + j * VI::W, v);
        }
}

// Up to TM rows by a whole panel of NV registers, as NV / TV column slices of TM x TV registers, the first slice
// streaming the panel (prefetch), the others finding it in L1. With TV = NV (one slice) it is the regular tile; with
// more rows in thinner slices, the tall tile. For a product of a few rows whose panels
// come from memory: one pass over the weights for every row. 5 x 384 x 51840 from DRAM, kernel alone: 6-row slices
// 3.77-3.96 ms against 4.46-4.72 for 2-row tiles (/tmp probe).
template <int TM, int TV, int NV, int M = TM>
void int8_tall(int64_t m, int64_t nb, const void* a, int64_t lda, const float* sa, const int32_t* ta, int64_t ldsa,
               const int8_t* b, const float* sw, float* c, int64_t ldc, const float* bias, int64_t ahead) {
    if constexpr (M >= 1) {
        if (m == M) {
            for (int s = 0; s < NV / TV; ++s)
                int8_tile_m<M, TV, NV>(nb, static_cast<const typename VI::aval*>(a), lda, sa, ta, ldsa,
                                       b + s * TV * VI::W * VI::kGroup, sw + s * TV * VI::W, c + s * TV * VI::W, ldc,
                                       bias ? bias + s * TV * VI::W : nullptr, s == 0 ? ahead : 0);
            return;
        }
        return int8_tall<TM, TV, NV, M - 1>(m, nb, a, lda, sa, ta, ldsa, b, sw, c, ldc, bias, ahead);
    }
}

// (templates: instantiated only by the sets that use them)
template <class Q = VI>
void int8_quantize(const float* a, int64_t lda, int64_t m, int64_t k, int16_t* q, int64_t ldq, float* scale,
                   int64_t lds) {
    const int64_t nb = (k + kQBlock - 1) / kQBlock;
    for (int64_t i = 0; i < m; ++i)
        for (int64_t blk = 0; blk < nb; ++blk) {
            const int64_t p0 = blk * kQBlock, n = k - p0 < kQBlock ? k - p0 : kQBlock;
            const float* x = a + i * lda + p0;
            int16_t* y = q + i * ldq + p0;
            bool finite = true;
            const float amax = Q::absmax(x, n, &finite);
            float inv = 0.0f, s = 0.0f;
            if (!finite) {
                s = __builtin_nanf("");
            } else if (amax >= 0x1p-100f) {
                inv = 127.0f / amax;
                s = amax / 127.0f;
            }
            Q::quantize_row(x, n, y, inv);
            for (int64_t p = n; p < kQBlock; ++p) y[p] = 0;
            scale[i * lds + blk] = s;
        }
}

// int8_quantize's values narrowed to int8, with each block's sum (a block's int16 values at a time, on the stack).
template <class Q = VI>
void int8_quantize8(const float* a, int64_t lda, int64_t m, int64_t k, int8_t* q, int64_t ldq, float* scale,
                    int32_t* sum, int64_t lds) {
    const int64_t nb = (k + kQBlock - 1) / kQBlock;
    int16_t t[kQBlock];
    for (int64_t i = 0; i < m; ++i)
        for (int64_t blk = 0; blk < nb; ++blk) {
            const int64_t p0 = blk * kQBlock, n = k - p0 < kQBlock ? k - p0 : kQBlock;
            int8_quantize<Q>(a + i * lda + p0, lda, 1, n, t, kQBlock, scale + i * lds + blk, lds);
            int32_t s = 0;
            for (int p = 0; p < kQBlock; ++p) {
                q[i * ldq + p0 + p] = static_cast<int8_t>(t[p]);
                s += t[p];
            }
            sum[i * lds + blk] = s;
        }
}

// The tile, the tall tile and (pairs) the quantizers; the quad sets take theirs from elsewhere (the same values).
template <int MR, int NV, int TM = MR, int TV = NV>
Int8Kernels make_int8_kernels() {
    static_assert(NV % TV == 0, "the tall tile's slices must divide the panel");
    Int8Kernels k{};
    k.mr = MR;
    k.nr = NV * VI::W;
    k.kgroup = VI::kGroup;
    k.tile = &int8_tall<MR, NV, NV>;
    k.tall_mr = TM;
    k.tall = &int8_tall<TM, TV, NV>;
    if constexpr (VI::kGroup == 2) {
        k.quantize = &int8_quantize<>;
        k.quantize8 = &int8_quantize8<>;
    }
    return k;
}

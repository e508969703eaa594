// Vectorised transcendental functions, written against an `Ops` interface (reg, set1, fmadd, mul, add,
// sub, div, min, max, abs, copysign, round, pow2i, zero_where_less). Included inside the anonymous
// namespace of each vector ISA translation unit, before that unit defines its `V`.

// Polynomial exp for vector ISAs (Cephes-style range reduction: x = n ln2 + r, |r| <= ln2 / 2,
// degree-6 polynomial for e^r, 2^n built in the exponent bits). ~1-2 ulp over the float range;
// x below -87.3 (including -inf, the masked scores) gives exactly 0; NaN gives NaN (min / max return their
// second operand when either is NaN, so the clamps take x second: a NaN score must not become e^88).
template <typename Ops>
inline typename Ops::reg poly_exp(typename Ops::reg x) {
    using reg = typename Ops::reg;
    const reg hi = Ops::set1(88.3762626647949f);
    const reg lo = Ops::set1(-87.3365447505531f);
    reg xc = Ops::min(hi, x);
    const reg underflow_ref = xc;
    xc = Ops::max(lo, xc);
    const reg fx = Ops::round(Ops::mul(xc, Ops::set1(1.44269504088896341f)));
    reg r = Ops::fmadd(fx, Ops::set1(-0.693359375f), xc);
    r = Ops::fmadd(fx, Ops::set1(2.12194440e-4f), r);
    reg p = Ops::set1(1.9875691500e-4f);
    p = Ops::fmadd(p, r, Ops::set1(1.3981999507e-3f));
    p = Ops::fmadd(p, r, Ops::set1(8.3334519073e-3f));
    p = Ops::fmadd(p, r, Ops::set1(4.1665795894e-2f));
    p = Ops::fmadd(p, r, Ops::set1(1.6666665459e-1f));
    p = Ops::fmadd(p, r, Ops::set1(5.0000001201e-1f));
    p = Ops::fmadd(p, Ops::mul(r, r), Ops::add(r, Ops::set1(1.0f)));
    const reg y = Ops::mul(p, Ops::pow2i(fx));
    return Ops::zero_where_less(underflow_ref, lo, y);
}

// erf by Abramowitz & Stegun 7.1.26 (|error| <= 1.5e-7), odd-extended.
template <typename Ops>
inline typename Ops::reg poly_erf(typename Ops::reg x) {
    using reg = typename Ops::reg;
    const reg ax = Ops::abs(x);
    const reg t = Ops::div(Ops::set1(1.0f), Ops::fmadd(Ops::set1(0.3275911f), ax, Ops::set1(1.0f)));
    reg p = Ops::set1(1.061405429f);
    p = Ops::fmadd(p, t, Ops::set1(-1.453152027f));
    p = Ops::fmadd(p, t, Ops::set1(1.421413741f));
    p = Ops::fmadd(p, t, Ops::set1(-0.284496736f));
    p = Ops::fmadd(p, t, Ops::set1(0.254829592f));
    p = Ops::mul(p, t);
    const reg e = poly_exp<Ops>(Ops::sub(Ops::zero(), Ops::mul(ax, ax)));
    const reg y = Ops::sub(Ops::set1(1.0f), Ops::mul(p, e));
    return Ops::copysign(y, x);
}

// tanh(u) = sign(u) (1 - 2 / (exp(2|u|) + 1)); exp saturates at 88.37, so large |u| gives exactly +-1.
template <typename Ops>
inline typename Ops::reg poly_tanh(typename Ops::reg u) {
    using reg = typename Ops::reg;
    const reg au = Ops::abs(u);
    const reg e = poly_exp<Ops>(Ops::add(au, au));
    const reg y = Ops::sub(Ops::set1(1.0f), Ops::div(Ops::set1(2.0f), Ops::add(e, Ops::set1(1.0f))));
    return Ops::copysign(y, u);
}

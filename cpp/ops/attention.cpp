#include "ops/attention.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>

#include "cpu/buffer.h"
#include "cpu/cpu.h"
#include "gemm/gemm.h"
#include "gemm/packed_matrix.h"
#include "ops/softmax.h"

namespace pyattn::ops {
namespace {

using kernels::KernelSet;
constexpr int f16_format = static_cast<int>(kernels::HalfFormat::f16);
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Queries handled by the direct (unpacked) path: packing K and V per head costs as much as a GEMV over
// them, so for a few query rows (decoding) the scores are plain dot products instead. Rows that share their keys
// (direct_rows) take it up to kDirectMaxRows rows: one pass over K and V serves them all.
constexpr int64_t kDirectMaxLq = 4;

inline void apply_mask(const KernelSet& ks, const MaskRef& m, int64_t b, int64_t h, int64_t qi, int64_t j0, int64_t n,
                       float* s) {
    if (!m.data) return;
    const int64_t off = b * m.sb + h * m.sh + qi * m.sq + j0;
    if (m.is_bool)
        ks.mask_bool(s, static_cast<const uint8_t*>(m.data) + off, n);
    else
        ks.add(s, static_cast<const float*>(m.data) + off, n);
}

// Masks scores s[0, n) of query qi against keys [j0, j0 + n) (soft-capped first where a.softcap asks).
inline void mask_row(const KernelSet& ks, const AttentionArgs& a, int64_t b, int64_t h, int64_t qi, int64_t j0,
                     int64_t n, float* s) {
    if (a.softcap > 0.0f) ks.softcap(s, n, a.softcap);
    if (a.causal) {
        const int64_t visible = qi + a.causal_offset + 1 - j0;  // keys [j0, j0 + visible) are visible
        for (int64_t j = std::max<int64_t>(visible, 0); j < n; ++j) s[j] = kNegInf;
        if (a.window)  // and only the last `window` of them
            for (int64_t j = 0; j < std::min(n, visible - a.window); ++j) s[j] = kNegInf;
    }
    apply_mask(ks, a.attn_mask, b, h, qi, j0, n, s);
    apply_mask(ks, a.key_padding_mask, b, h, qi, j0, n, s);
}

// Keys [0, end) that query qi can see at all under the causal mask.
inline int64_t causal_end(const AttentionArgs& a, int64_t qi) {
    if (!a.causal) return a.Lk;
    return std::clamp<int64_t>(qi + a.causal_offset + 1, 0, a.Lk);
}

// The first key query qi can see under a sliding window (0 without one).
inline int64_t window_start(const AttentionArgs& a, int64_t qi) {
    if (!a.causal || !a.window) return 0;
    return std::clamp<int64_t>(qi + a.causal_offset + 1 - a.window, 0, a.Lk);
}

template <class T = float>
inline const T* head(const HeadTensor& t, int64_t b, int64_t h) {
    return static_cast<const T*>(t.data) + b * t.sb + h * t.sh;
}
// K or V of query head h: K/V head h / kv_group (grouped-query attention shares it among kv_group query heads).
template <class T = float>
inline const T* kv_head(const AttentionArgs& a, const HeadTensor& t, int64_t b, int64_t h) {
    return head<T>(t, b, h / a.kv_group);
}
inline float* out_row(const AttentionArgs& a, int64_t b, int64_t h, int64_t i) {
    return a.out + b * a.out_sb + h * a.out_sh + i * a.out_sl;
}

// softmax of a masked score row in place; all -inf gives zeros, a NaN (or +inf) score NaN throughout.
// Returns false for an all-masked row.
inline bool softmax_inplace(const KernelSet& ks, float* s, int64_t n) {
    const float m = ks.max(s, n);
    if (m == kNegInf) {
        const bool nan = any_nan(s, n);
        std::fill(s, s + n, nan ? std::numeric_limits<float>::quiet_NaN() : 0.0f);
        return nan;
    }
    ks.scale(s, n, 1.0f / ks.exp_sum(s, s, n, m));
    return true;
}

// Keys [0, j) of batch entry b that its bool key padding mask masks out, j <= n: a left-padded row's padding.
inline int64_t leading_padding(const AttentionArgs& a, int64_t b, int64_t n) {
    const MaskRef& m = a.key_padding_mask;
    if (!m.data || !m.is_bool) return 0;
    const uint8_t* row = static_cast<const uint8_t*>(m.data) + b * m.sb;
    int64_t j = 0;
    while (j < n && row[j]) ++j;
    return j;
}

// Queries handled together by one task of the direct path: kv_group query heads that share a K/V head (grouped-query
// attention), or, for multi-head attention without the causal mask, up to this many query rows of one head (every
// row sees the same keys: Whisper's beams folded against their one encoder output). Each key and value row is then
// read once for all of them.
constexpr int64_t kDirectMaxRows = 16;

// Whether every query row of a head sees the same keys and a task can take a block of them: multi-head attention
// (no group of heads to share the pass with) without the causal mask.
inline bool shares_keys(const AttentionArgs& a) { return a.kv_group == 1 && !a.causal; }

// Query rows per direct task: a block of rows where they share their keys, else one.
inline int64_t direct_rows(const AttentionArgs& a) { return shares_keys(a) ? std::min(a.Lq, kDirectMaxRows) : 1; }

// m query vectors against keys [j0, j0 + n) of K/V head (b, kv head of h): vector r is query head h + r dh, row
// i + r di (dh = 1, di = 0: the heads of a group; dh = 0, di = 1: rows of one head). s: m x n floats of scratch.
void direct_block(const KernelSet& ks, const AttentionArgs& a, int64_t b, int64_t h, int64_t i, int64_t dh, int64_t di,
                  int64_t m, int64_t j0, int64_t n, float* s) {
    const bool f16 = a.k.f16;
    const int64_t ldq = dh * a.q.sh + di * a.q.sl, ldo = dh * a.out_sh + di * a.out_sl;
    const float* q = head(a.q, b, h) + i * a.q.sl;
    const int64_t k0 = j0 * a.k.sl, v0 = j0 * a.v.sl;  // the first key and value after the padding
    if (f16)
        ks.attn_scores_f16(m, q, ldq, kv_head<uint16_t>(a, a.k, b, h) + k0, a.k.sl, n, a.D, s, n);
    else
        ks.attn_scores(m, q, ldq, kv_head(a, a.k, b, h) + k0, a.k.sl, n, a.D, s, n);
    bool dead[kDirectMaxRows];  // rows whose every key is masked: zeros, whatever V holds
    for (int64_t r = 0; r < m; ++r) {
        float* sr = s + r * n;
        ks.scale(sr, n, a.scale);
        mask_row(ks, a, b, h + r * dh, i + r * di, j0, n, sr);
        dead[r] = !softmax_inplace(ks, sr, n);
    }
    float* o = out_row(a, b, h, i);
    if (f16)
        ks.attn_values_f16(m, s, n, n, kv_head<uint16_t>(a, a.v, b, h) + v0, a.v.sl, a.Dv, o, ldo);
    else
        ks.attn_values(m, s, n, n, kv_head(a, a.v, b, h) + v0, a.v.sl, a.Dv, o, ldo);
    for (int64_t r = 0; r < m; ++r)
        if (dead[r]) std::fill(o + r * ldo, o + r * ldo + a.Dv, 0.0f);
}

// One task of the direct path, t = (b Hkv + g) ceil(Lq / R) + block, R = direct_rows(a): query rows [block R,
// block R + R) of the kv_group query heads that share K/V head g of batch entry b. Keys masked by the row's leading
// key padding are skipped, not masked: they would add exact zeros, but shift which lanes of the softmax sum and of
// P V the real keys fall in, so a left-padded row (a batch of prompts, continuous batching) computes bit for bit
// what the row computes alone. How many rows or heads share a pass changes no bits: each score and each output
// element is summed in the same order whatever the others are.
void direct_task(const KernelSet& ks, const AttentionArgs& a, int64_t t, float* s) {
    const int64_t G = a.kv_group, Hkv = a.H / G, R = direct_rows(a), blocks = (a.Lq + R - 1) / R;
    const int64_t i = t % blocks * R, rows = std::min(R, a.Lq - i), bg = t / blocks, b = bg / Hkv, h0 = bg % Hkv * G;
    const int64_t end = causal_end(a, i);  // the same for every row of a block (rows > 1: no causal mask)
    // keys before the sliding window or the row's leading padding are skipped
    const int64_t j0 = std::max(window_start(a, i), leading_padding(a, b, end));
    const int64_t n = end - j0;  // keys [j0, end)
    if (n == 0) {                // nothing visible: zeros
        for (int64_t h = h0; h < h0 + G; ++h)
            for (int64_t r = i; r < i + rows; ++r) std::fill(out_row(a, b, h, r), out_row(a, b, h, r) + a.Dv, 0.0f);
        return;
    }
    if (rows > 1) return direct_block(ks, a, b, h0, i, 0, 1, rows, j0, n, s);
    for (int64_t c0 = h0; c0 < h0 + G; c0 += kDirectMaxRows)  // MQA's groups can be large
        direct_block(ks, a, b, c0, i, 1, 0, std::min(kDirectMaxRows, h0 + G - c0), j0, n, s);
}

void attention_weights(const AttentionArgs& a, int nt) {
    const KernelSet& ks = cpu::active();
    const int64_t heads = a.B * a.H;
    const bool split_heads = heads >= nt;
#pragma omp parallel for num_threads(split_heads ? nt : 1) schedule(dynamic, 1) if (split_heads && nt > 1)
    for (int64_t bh = 0; bh < heads; ++bh) {
        const int64_t b = bh / a.H, h = bh % a.H;
        const int inner = split_heads ? 1 : nt;
        float* w = a.weights + bh * a.Lq * a.Lk;
        gemm::sgemm(a.Lq, a.Lk, a.D, head(a.q, b, h), a.q.sl, gemm::BRef{kv_head(a, a.k, b, h), a.k.sl, true}, w, a.Lk,
                    0.0f, {}, inner);
        for (int64_t i = 0; i < a.Lq; ++i) {
            float* s = w + i * a.Lk;
            ks.scale(s, a.Lk, a.scale);
            mask_row(ks, a, b, h, i, 0, a.Lk, s);
            softmax_inplace(ks, s, a.Lk);
        }
        gemm::sgemm(a.Lq, a.Dv, a.Lk, w, a.Lk, gemm::BRef{kv_head(a, a.v, b, h), a.v.sl, false}, out_row(a, b, h, 0),
                    a.out_sl, 0.0f, {}, inner);
    }
}

// The flash paths' online softmax over one tile of scores: rows [i0, i0 + rows) of head (b, h) against keys
// [j0, j0 + n), st[i * ldt + j]. Masks the scores, turns them into exp(s - running max) in place, and rescales the
// running output rows o[i * ldo, + ldo) and sums lrow when the row's max grows.
void online_softmax(const KernelSet& ks, const AttentionArgs& a, int64_t b, int64_t h, int64_t i0, int64_t rows,
                    int64_t j0, int64_t n, float* st, int64_t ldt, float* o, int64_t ldo, float* mrow, float* lrow) {
    for (int64_t i = 0; i < rows; ++i) {
        float* s = st + i * ldt;
        mask_row(ks, a, b, h, i0 + i, j0, n, s);
        const float m_new = std::max(mrow[i], ks.max(s, n));
        if (m_new == kNegInf) {  // nothing visible yet in this row (or only NaN: poisons the row)
            if (any_nan(s, n)) lrow[i] = std::numeric_limits<float>::quiet_NaN();
            std::fill(s, s + n, 0.0f);
            continue;
        }
        const float alpha = std::exp(mrow[i] - m_new);  // 0 on the first visible block
        lrow[i] = lrow[i] * alpha + ks.exp_sum(s, s, n, m_new);
        // (on the first visible block o holds the zeros of P V over nothing visible, or NaN: scaling keeps it)
        if (alpha != 1.0f && mrow[i] != kNegInf) ks.scale(o + i * ldo, ldo, alpha);
        mrow[i] = m_new;
    }
}

// The flash paths' last step: output rows [i0, i0 + rows) of head (b, h) = running output / running sum.
void write_rows(const KernelSet& ks, const AttentionArgs& a, int64_t b, int64_t h, int64_t i0, int64_t rows,
                const float* o, int64_t ldo, const float* lrow) {
    for (int64_t i = 0; i < rows; ++i) {
        float* dst = out_row(a, b, h, i0 + i);
        const float inv = lrow[i] == 0.0f ? 0.0f : 1.0f / lrow[i];  // 0: every key masked; NaN stays NaN
        std::copy(o + i * ldo, o + i * ldo + a.Dv, dst);
        ks.scale(dst, a.Dv, inv);
    }
}

// The flash path's geometry, the same for both precisions: query blocks of mq rows (whole MR groups of the tile),
// key blocks of nkb keys (whole NR panels), V's columns padded to whole panels.
struct FlashShape {
    int64_t mr, nr, mq, nkb, lk_pad, v_panels, dv_pad;
    FlashShape(const KernelSet& ks, const AttentionArgs& a)
        : mr(ks.blocking.mr),
          nr(ks.blocking.nr),
          mq(mr * std::max<int64_t>(1, 48 / mr)),
          nkb(std::max<int64_t>(nr, 256 / nr * nr)),
          lk_pad((a.Lk + nr - 1) / nr * nr),
          v_panels((a.Dv + nr - 1) / nr),
          dv_pad(v_panels * nr) {}
};

// Float32 products for flash_attention: K^T and V of a head packed as GEMM B panels (a float16 cache widened first),
// the query block as A panels with the scale folded in; S by the micro-kernel, O += P V by the rows kernel reading P
// in place (row stride nkb) -- no packing pass.
struct FloatProducts {
    const KernelSet& ks;
    const AttentionArgs& a;
    const FlashShape& f;
    float *kp, *vp, *qp, *kw;

    FloatProducts(const KernelSet& ks_, const AttentionArgs& a_, const FlashShape& f_)
        : ks(ks_),
          a(a_),
          f(f_),
          kp(scratch<Slot::attn_k>(static_cast<std::size_t>(f.lk_pad * a.D))),
          vp(scratch<Slot::attn_v>(static_cast<std::size_t>(f.lk_pad * f.dv_pad))),
          qp(scratch<Slot::attn_q>(static_cast<std::size_t>(f.mq * a.D))),
          kw(a.k.f16 ? scratch<Slot::attn_k_wide>(static_cast<std::size_t>(a.Lk * a.D)) : nullptr) {}

    void pack_kv(int64_t b, int64_t h) {
        const int64_t D = a.D, nr = f.nr;
        const float* k = kw;
        int64_t ldk = D;
        if (a.k.f16) {  // the head's keys widened, then packed as float32 ones
            const uint16_t* k16 = kv_head<uint16_t>(a, a.k, b, h);
            for (int64_t j = 0; j < a.Lk; ++j) ks.half[f16_format].widen(k16 + j * a.k.sl, kw + j * D, D);
        } else {
            k = kv_head(a, a.k, b, h);
            ldk = a.k.sl;
        }
        gemm::pack_b(ks, k, ldk, true, 0, D, 0, a.Lk, static_cast<int>(nr), kp, 0, f.lk_pad / nr);
        for (int64_t c = 0; c < f.v_panels; ++c) {
            float* panel = vp + c * f.lk_pad * nr;
            const int64_t w = std::min<int64_t>(nr, a.Dv - c * nr);
            for (int64_t j = 0; j < a.Lk; ++j) {
                float* dst = panel + j * nr;
                if (a.v.f16) {
                    ks.half[f16_format].widen(kv_head<uint16_t>(a, a.v, b, h) + j * a.v.sl + c * nr, dst, w);
                } else {
                    const float* src = kv_head(a, a.v, b, h) + j * a.v.sl + c * nr;
                    std::copy(src, src + w, dst);
                }
                std::fill(dst + w, dst + nr, 0.0f);
            }
        }
    }

    void pack_q(int64_t b, int64_t h, int64_t i0, int64_t rows) {
        ks.pack_a(head(a.q, b, h) + i0 * a.q.sl, a.q.sl, rows, a.D, static_cast<int>(f.mr), qp, a.scale);
    }

    // S = (scale Q) K^T for keys [j0, j0 + n): rows x n at st (full micro-tiles, extra columns ignored)
    void scores(int64_t j0, int64_t n, int64_t rows, float* st) {
        const int64_t D = a.D, mr = f.mr, nr = f.nr, row_groups = (rows + mr - 1) / mr;
        for (int64_t q = 0; q < (n + nr - 1) / nr; ++q)
            for (int64_t r = 0; r < row_groups; ++r)
                ks.micro(D, qp + r * D * mr, kp + (j0 / nr + q) * D * nr, nr, st + r * mr * f.nkb + q * nr, f.nkb,
                         0.0f);
    }

    // O += P V for keys [j0, j0 + n), P the probabilities in st
    void values(int64_t j0, int64_t n, int64_t rows, const float* st, float* o) {
        const int64_t mr = f.mr, nr = f.nr, row_groups = (rows + mr - 1) / mr;
        for (int64_t c = 0; c < f.v_panels; ++c)
            for (int64_t r = 0; r < row_groups; ++r)
                ks.rows(std::min<int64_t>(mr, rows - r * mr), n, st + r * mr * f.nkb, f.nkb,
                        vp + c * f.lk_pad * nr + j0 * nr, nr, o + r * mr * f.dv_pad + c * nr, f.dv_pad, 1.0f);
    }
};

// Products on bfloat16 pairs for flash_attention (AttentionArgs::bf16): S = (scale Q) K^T by the pair micro-kernel
// of the blocked GEMM (Q's rows as its A panel, K^T as its B panel: a key's D floats are its column's pairs), and
// O += P V by the pair rows kernel (P's rows as pairs, V's rows in bfloat16 as stored panels of 32 columns).
struct PairProducts {
    const KernelSet& ks;
    const kernels::Bf16PairKernels& bp;
    const AttentionArgs& a;
    const FlashShape& f;
    const int64_t dp;  // pairs per query and key row
    // K^T as pair panels (nr keys each: pair p of key j at p nr + j), V as bfloat16 panels of nr columns (key j's row
    // at j nr), the query block scaled and as pairs, the probabilities of a tile as pairs
    uint32_t* kp;
    uint16_t* vp;
    float* qs;
    uint32_t *qp, *pp;

    PairProducts(const KernelSet& ks_, const AttentionArgs& a_, const FlashShape& f_)
        : ks(ks_),
          bp(ks_.bf16pairs),
          a(a_),
          f(f_),
          dp((a.D + 1) / 2),
          kp(reinterpret_cast<uint32_t*>(scratch<Slot::attn_k>(static_cast<std::size_t>(f.lk_pad * dp)))),
          vp(reinterpret_cast<uint16_t*>(scratch<Slot::attn_v>(static_cast<std::size_t>(f.lk_pad * f.dv_pad / 2)))),
          qs(scratch<Slot::attn_q>(static_cast<std::size_t>(f.mq * (a.D + dp)))),
          qp(reinterpret_cast<uint32_t*>(qs + f.mq * a.D)),
          pp(reinterpret_cast<uint32_t*>(scratch<Slot::attn_pairs>(static_cast<std::size_t>(f.mq * f.nkb / 2)))) {}

    void pack_kv(int64_t b, int64_t h) {
        const int64_t nr = f.nr;
        const float* k = kv_head(a, a.k, b, h);
        const float* v = kv_head(a, a.v, b, h);
        if (a.Lk % nr) std::fill(kp + (f.lk_pad - nr) * dp, kp + f.lk_pad * dp, 0u);  // the last panel's tail
        for (int64_t j = 0; j < a.Lk; j += 16)  // 16 keys per call: their pairs turned into columns
            bp.pack(k + j * a.k.sl, a.k.sl, std::min<int64_t>(16, a.Lk - j), a.D, kp + j / nr * nr * dp + j % nr, 1,
                    nr);
        for (int64_t c = 0; c < f.v_panels; ++c) {
            uint16_t* panel = vp + c * f.lk_pad * nr;
            const int64_t w = std::min<int64_t>(nr, a.Dv - c * nr);
            if (w < nr) std::fill(panel, panel + a.Lk * nr, uint16_t{0});
            // a row of w floats as pairs is the row in bfloat16, in memory order
            bp.pack(v + c * nr, a.v.sl, a.Lk, w, reinterpret_cast<uint32_t*>(panel), nr / 2, 1);
        }
    }

    void pack_q(int64_t b, int64_t h, int64_t i0, int64_t rows) {
        const int64_t D = a.D, mr = f.mr, row_groups = (rows + mr - 1) / mr;
        for (int64_t i = 0; i < rows; ++i) {
            const float* q = head(a.q, b, h) + (i0 + i) * a.q.sl;
            std::copy(q, q + D, qs + i * D);
            ks.scale(qs + i * D, D, a.scale);
        }
        if (rows % mr) std::fill(qp + (row_groups - 1) * mr * dp, qp + row_groups * mr * dp, 0u);
        for (int64_t r = 0; r < row_groups; ++r)
            bp.pack(qs + r * mr * D, D, std::min(mr, rows - r * mr), D, qp + r * mr * dp, 1, mr);
    }

    void scores(int64_t j0, int64_t n, int64_t rows, float* st) {
        const int64_t mr = f.mr, nr = f.nr, row_groups = (rows + mr - 1) / mr;
        for (int64_t q = 0; q < (n + nr - 1) / nr; ++q)
            for (int64_t r = 0; r < row_groups; ++r)
                bp.micro(dp, qp + r * mr * dp, kp + (j0 / nr + q) * nr * dp, st + r * mr * f.nkb + q * nr, f.nkb, 0.0f);
    }

    void values(int64_t j0, int64_t n, int64_t rows, const float* st, float* o) {
        const int64_t mr = f.mr, nr = f.nr, nkb = f.nkb, row_groups = (rows + mr - 1) / mr;
        bp.pack(st, nkb, rows, n, pp, nkb / 2, 1);
        for (int64_t c = 0; c < f.v_panels; ++c)
            for (int64_t r = 0; r < row_groups; ++r)
                bp.rows(std::min(mr, rows - r * mr), n, pp + r * mr * nkb / 2, nkb / 2,
                        vp + c * f.lk_pad * nr + j0 * nr, nr, o + r * mr * f.dv_pad + c * nr, f.dv_pad, 1.0f);
    }
};

// The flash path: tasks of (batch entry, head, block of mq query rows), split dynamically over the threads. Each
// thread packs K and V once per K/V head it meets (Products::pack_kv), then per task its query block (pack_q), and
// over blocks of nkb keys the scores (scores), their online softmax, and O += P V (values); then O / sum.
template <class Products>
void flash_attention(const KernelSet& ks, const AttentionArgs& a, int nt) {
    const FlashShape f(ks, a);
    const int64_t qblocks = (a.Lq + f.mq - 1) / f.mq;
    const int64_t tasks = a.B * a.H * qblocks;

#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        // Per thread: the packed operands, one tile of scores (then probabilities, in place), and the running
        // output / max / sum.
        Products p(ks, a, f);
        float* st = scratch<Slot::attn_tile>(static_cast<std::size_t>(f.mq * f.nkb));
        float* o = scratch<Slot::attn_out>(static_cast<std::size_t>(f.mq * f.dv_pad + 2 * f.mq));
        float* mrow = o + f.mq * f.dv_pad;
        float* lrow = mrow + f.mq;
        int64_t packed_bh = -1;

#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < tasks; ++t) {
            const int64_t bh = t / qblocks, qb = t % qblocks, b = bh / a.H, h = bh % a.H;
            const int64_t kv = b * a.H + h / a.kv_group * a.kv_group;  // the same for every head of a group
            if (kv != packed_bh) {
                p.pack_kv(b, h);
                packed_bh = kv;
            }
            const int64_t i0 = qb * f.mq, rows = std::min<int64_t>(f.mq, a.Lq - i0);
            const int64_t row_groups = (rows + f.mr - 1) / f.mr;
            p.pack_q(b, h, i0, rows);
            std::fill(o, o + row_groups * f.mr * f.dv_pad, 0.0f);
            std::fill(mrow, mrow + f.mq, kNegInf);
            std::fill(lrow, lrow + f.mq, 0.0f);

            const int64_t j_end = causal_end(a, i0 + rows - 1);
            // key blocks from the first that the block's first row sees under a sliding window
            for (int64_t j0 = window_start(a, i0) / f.nkb * f.nkb; j0 < j_end; j0 += f.nkb) {
                const int64_t n = std::min<int64_t>(f.nkb, j_end - j0);
                p.scores(j0, n, rows, st);
                online_softmax(ks, a, b, h, i0, rows, j0, n, st, f.nkb, o, f.dv_pad, mrow, lrow);
                p.values(j0, n, rows, st, o);
            }
            write_rows(ks, a, b, h, i0, rows, o, f.dv_pad, lrow);
        }
    }
}

// Whether the pair products run a: asked for, float32 K and V, and the pair kernels with the tile it assumes.
bool flash_bf16(const KernelSet& ks, const AttentionArgs& a) {
    const kernels::Bf16PairKernels& bp = ks.bf16pairs;
    return a.bf16 && !a.k.f16 && !a.v.f16 && bp.micro && bp.rows && bp.pack && ks.blocking.nr == 32 &&
           bp.rows_max >= ks.blocking.mr;
}

}  // namespace

void scaled_dot_product_attention(const AttentionArgs& a) {
    if (a.B == 0 || a.H == 0 || a.Lq == 0) return;
    const double flops = 2.0 * a.B * a.H * a.Lq * a.Lk * (a.D + a.Dv);
    int nt = cpu::threads_for(flops);
    if (omp_in_parallel()) nt = 1;
    if (a.weights) {
        if (a.k.f16 || a.v.f16) throw std::invalid_argument("attention weights need float32 K and V");
        return attention_weights(a, nt);
    }
    const KernelSet& ks = cpu::active();
    if (a.Lq <= kDirectMaxLq || (shares_keys(a) && a.Lq <= kDirectMaxRows)) {
        const int64_t tasks = attention_tasks(a);
#pragma omp parallel num_threads(nt) if (nt > 1)
        {
            const int tid = omp_get_thread_num(), nth = omp_get_num_threads();
            attention_rows(a, tasks * tid / nth, tasks * (tid + 1) / nth);
        }
        return;
    }
    if (flash_bf16(ks, a)) return flash_attention<PairProducts>(ks, a, nt);
    flash_attention<FloatProducts>(ks, a, nt);
}

int64_t attention_tasks(const AttentionArgs& a) {
    const int64_t R = direct_rows(a);
    return a.B * (a.H / a.kv_group) * ((a.Lq + R - 1) / R);
}

void attention_rows(const AttentionArgs& a, int64_t t0, int64_t t1) {
    const KernelSet& ks = cpu::active();
    t1 = std::min(t1, attention_tasks(a));
    if (t0 >= t1) return;
    const int64_t m = std::max(std::min(a.kv_group, kDirectMaxRows), direct_rows(a));  // query vectors per pass
    float* s = scratch<Slot::attn_scores>(static_cast<std::size_t>(m * a.Lk));
    for (int64_t t = t0; t < t1; ++t) direct_task(ks, a, t, s);
}

}  // namespace pyattn::ops

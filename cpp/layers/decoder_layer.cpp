#include "layers/decoder_layer.h"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstring>

#include "cpu/buffer.h"
#include "cpu/cpu.h"
#include "gemm/gemm.h"
#include "ops/activations.h"
#include "ops/attention.h"
#include "ops/rms_norm.h"
#include "ops/rope.h"

namespace pyattn::layers {
namespace {

void project(const Projection& p, int64_t M, const float* a, float* c, float beta = 0.0f) {
    gemm::sgemm(M, a, p.w->K(), *p.w, c, p.w->N(), beta, gemm::Epilogue{p.bias, kernels::Activation::none});
}

// The attention arguments of layer l over its cache for the rows in s.qkv.
ops::AttentionArgs attention_args(const DecoderLayer& l, int64_t B, int64_t L, const LayerCache& cache, int64_t past,
                                  const uint8_t* key_padding, const DecoderScratch& s) {
    const int64_t H = l.heads, Hkv = l.kv_heads, D = l.head_dim, Eq = H * D, Ekv = Hkv * D, W = Eq + 2 * Ekv;
    const int64_t Lk = past + L;
    ops::AttentionArgs a;
    a.B = B;
    a.H = H;
    a.kv_group = H / Hkv;
    a.Lq = L;
    a.Lk = Lk;
    a.D = a.Dv = D;
    a.q = ops::HeadTensor{s.qkv, L * W, D, W};
    a.k = ops::HeadTensor{cache.k, cache.capacity * Ekv, cache.capacity * D, D, cache.f16};
    a.v = ops::HeadTensor{cache.v, cache.capacity * Ekv, cache.capacity * D, D, cache.f16};
    a.out = s.ctx;
    a.out_sb = L * Eq;
    a.out_sh = D;
    a.out_sl = Eq;
    if (key_padding) {
        a.key_padding_mask.data = key_padding;
        a.key_padding_mask.is_bool = true;
        a.key_padding_mask.sb = Lk;
    }
    a.causal = true;
    a.causal_offset = past;
    a.scale = l.scale;
    return a;
}

// K/V heads [g0, g1) of the rows in s.qkv (B, L, (H + 2 Hkv) D) into the cache at positions past .. past + L.
void write_cache(const DecoderLayer& l, int64_t B, int64_t L, const LayerCache& cache, int64_t past, const float* qkv,
                 int64_t g0, int64_t g1, bool values) {
    const int64_t H = l.heads, Hkv = l.kv_heads, D = l.head_dim, W = (H + 2 * Hkv) * D;
    const int64_t col = (H + (values ? Hkv : 0)) * D;
    void* dst = values ? cache.v : cache.k;
    const kernels::KernelSet& ks = cpu::active();
    for (int64_t b = 0; b < B; ++b)
        for (int64_t g = g0; g < g1; ++g)
            for (int64_t t = 0; t < L; ++t) {
                const int64_t at = ((b * Hkv + g) * cache.capacity + past + t) * D;
                const float* src = qkv + (b * L + t) * W + col + g * D;
                if (cache.f16)
                    ks.narrow_f16(src, static_cast<uint16_t*>(dst) + at, D);
                else
                    std::memcpy(static_cast<float*>(dst) + at, src, D * sizeof(float));
            }
}

// [tid of nth] share of n units, as a half-open range.
inline void share(int64_t n, int tid, int nth, int64_t& lo, int64_t& hi) {
    lo = n * tid / nth;
    hi = n * (tid + 1) / nth;
}

// Columns [c0, c1) of n, shared at multiples of `unit` (a GEMM's panel width, so no panel is computed twice).
inline void share_cols(int64_t n, int64_t unit, int tid, int nth, int64_t& c0, int64_t& c1) {
    const int64_t units = (n + unit - 1) / unit;
    share(units, tid, nth, c0, c1);
    c0 = std::min(c0 * unit, n);
    c1 = std::min(c1 * unit, n);
}

// One layer as one thread of a team (the rows are few: a decoding step). Between the team's barriers each thread
// works on its own share: the Q/K/V heads (RoPE and the cache write of its own heads follow in the same pass), the
// query heads of the attention, the columns of W_o and W_down (added to x in the GEMM's epilogue, beta = 1, instead
// of in the next norm), and a range of the FFN width (its gate and up columns, then SwiGLU on them). The norms are
// computed by every thread into its own buffer. Five barriers per layer; nothing else synchronises.
void layer_team(const DecoderLayer& l, int64_t B, int64_t L, float* x, float* out, float beta_out,
                const int64_t* positions, const RopeTables& rope, const LayerCache& cache, int64_t past,
                const uint8_t* key_padding, const DecoderScratch& s, float* n, int tid, int nth) {
    const kernels::KernelSet& ks = cpu::active();
    const int64_t M = B * L, E = l.out.w->N(), H = l.heads, Hkv = l.kv_heads, D = l.head_dim;
    const int64_t Eq = H * D, Ekv = Hkv * D, W = Eq + 2 * Ekv, F = l.down.w->K();
    ops::rms_norm(x, E, n, E, M, E, l.attn_norm, l.eps);  // one thread's call inside the team: no nested region
    int64_t h0, h1;
    share(H + 2 * Hkv, tid, nth, h0, h1);
    gemm::gemm_cols(M, n, E, *l.qkv.w, s.qkv, W, 0.0f, gemm::Epilogue{l.qkv.bias, kernels::Activation::none}, h0 * D,
                    h1 * D);
    const int64_t q1 = std::min(h1, H), k0 = std::max(h0, H), k1 = std::min(h1, H + Hkv);
    if (q1 > h0)
        ops::rope(s.qkv + h0 * D, B, L, q1 - h0, L * W, W, D, positions, rope.cos, rope.sin, l.rot, l.interleaved);
    if (k1 > k0)
        ops::rope(s.qkv + k0 * D, B, L, k1 - k0, L * W, W, D, positions, rope.cos, rope.sin, l.rot, l.interleaved);
    // this thread's K and V heads into the cache
    if (k1 > k0) write_cache(l, B, L, cache, past, s.qkv, k0 - H, k1 - H, false);
    const int64_t v0 = std::max(h0, H + Hkv), v1 = std::min(h1, H + 2 * Hkv);
    if (v1 > v0) write_cache(l, B, L, cache, past, s.qkv, v0 - H - Hkv, v1 - H - Hkv, true);
#pragma omp barrier
    const ops::AttentionArgs a = attention_args(l, B, L, cache, past, key_padding, s);
    int64_t t0, t1;
    share(ops::attention_tasks(a), tid, nth, t0, t1);
    ops::attention_rows(a, t0, t1);
#pragma omp barrier
    int64_t e0, e1;
    share_cols(E, gemm::panel_cols(*l.out.w), tid, nth, e0, e1);
    gemm::gemm_cols(M, s.ctx, Eq, *l.out.w, x, E, 1.0f, gemm::Epilogue{l.out.bias, kernels::Activation::none}, e0, e1);
#pragma omp barrier
    ops::rms_norm(x, E, n, E, M, E, l.ffn_norm, l.eps);
    int64_t f0, f1;
    share_cols(F, gemm::panel_cols(*l.gate_up.w), tid, nth, f0, f1);
    const gemm::Epilogue gu{l.gate_up.bias, kernels::Activation::none};
    gemm::gemm_cols(M, n, E, *l.gate_up.w, s.gu, 2 * F, 0.0f, gu, f0, f1);
    gemm::gemm_cols(M, n, E, *l.gate_up.w, s.gu, 2 * F, 0.0f, gu, F + f0, F + f1);
    if (f1 > f0)
        for (int64_t r = 0; r < M; ++r)
            ks.silu_mul(s.gu + r * 2 * F + f0, s.gu + r * 2 * F + F + f0, s.ff + r * F + f0, f1 - f0);
#pragma omp barrier
    share_cols(E, gemm::panel_cols(*l.down.w), tid, nth, e0, e1);
    gemm::gemm_cols(M, s.ff, F, *l.down.w, out, E, beta_out, gemm::Epilogue{l.down.bias, kernels::Activation::none}, e0,
                    e1);
#pragma omp barrier
}

std::atomic<int64_t> g_team_rows{8};

}  // namespace

int64_t team_rows() { return g_team_rows.load(std::memory_order_relaxed); }
void set_team_rows(int64_t rows) {
    g_team_rows.store(std::clamp<int64_t>(rows, 0, gemm::kSmallM), std::memory_order_relaxed);
}

void decoder_stack(const DecoderLayer* const* layers, int64_t count, int64_t B, int64_t L, float* x, float* pending,
                   const int64_t* positions, const RopeTables& rope, const LayerCache* caches, int64_t past,
                   const uint8_t* key_padding, const DecoderScratch& s) {
    const int64_t M = B * L;
    if (M > team_rows()) {
        for (int64_t i = 0; i < count; ++i)
            decoder_layer(*layers[i], B, L, x, pending, i > 0, positions, rope, caches[i], past, key_padding, s);
        return;
    }
    const int64_t E = layers[0]->out.w->N();
    const int nt = omp_in_parallel() ? 1 : cpu::num_threads();
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        const int tid = omp_get_thread_num(), nth = omp_get_num_threads();
        float* n = scratch<Slot::decoder_norm>(static_cast<std::size_t>(M * E));
        for (int64_t i = 0; i < count; ++i) {
            const bool last = i + 1 == count;  // the last layer's FFN output goes to `pending`, the others into x
            layer_team(*layers[i], B, L, x, last ? pending : x, last ? 0.0f : 1.0f, positions, rope, caches[i], past,
                       key_padding, s, n, tid, nth);
        }
    }
}

void decoder_layer(const DecoderLayer& l, int64_t B, int64_t L, float* x, float* pending, bool has_pending,
                   const int64_t* positions, const RopeTables& rope, const LayerCache& cache, int64_t past,
                   const uint8_t* key_padding, const DecoderScratch& s) {
    const int64_t M = B * L, E = l.out.w->N(), H = l.heads, Hkv = l.kv_heads, D = l.head_dim;
    const int64_t Eq = H * D, Ekv = Hkv * D, W = Eq + 2 * Ekv, F = l.down.w->K();
    // n = RMSNorm(x (+= pending))
    ops::rms_norm(has_pending ? pending : x, E, s.n, E, M, E, l.attn_norm, l.eps, has_pending ? x : nullptr, E);
    project(l.qkv, M, s.n, s.qkv);  // (M, W)
    ops::rope(s.qkv, B, L, H, L * W, W, D, positions, rope.cos, rope.sin, l.rot, l.interleaved);
    ops::rope(s.qkv + Eq, B, L, Hkv, L * W, W, D, positions, rope.cos, rope.sin, l.rot, l.interleaved);
    write_cache(l, B, L, cache, past, s.qkv, 0, Hkv, false);
    write_cache(l, B, L, cache, past, s.qkv, 0, Hkv, true);
    const ops::AttentionArgs a = attention_args(l, B, L, cache, past, key_padding, s);
    ops::scaled_dot_product_attention(a);
    project(l.out, M, s.ctx, x, 1.0f);  // x += W_o ctx
    ops::rms_norm(x, E, s.n, E, M, E, l.ffn_norm, l.eps);
    project(l.gate_up, M, s.n, s.gu);  // (M, 2F)
    ops::swiglu(s.gu, s.ff, M, F);
    project(l.down, M, s.ff, pending);
}

}  // namespace pyattn::layers

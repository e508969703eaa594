#include "layers/decoder_layer.h"

#include <cstring>

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

}  // namespace

void decoder_layer(const DecoderLayer& l, int64_t B, int64_t L, float* x, float* pending, bool has_pending,
                   const int64_t* positions, const RopeTables& rope, const LayerCache& cache, int64_t past,
                   const uint8_t* key_padding, const DecoderScratch& s) {
    const int64_t M = B * L, E = l.out.w->N(), H = l.heads, Hkv = l.kv_heads, D = l.head_dim;
    const int64_t Eq = H * D, Ekv = Hkv * D, W = Eq + 2 * Ekv, F = l.down.w->K(), Lk = past + L;
    // n = RMSNorm(x (+= pending))
    ops::rms_norm(has_pending ? pending : x, E, s.n, E, M, E, l.attn_norm, l.eps, has_pending ? x : nullptr, E);
    project(l.qkv, M, s.n, s.qkv);  // (M, W)
    ops::rope(s.qkv, B, L, H, L * W, W, D, positions, rope.cos, rope.sin, l.rot, l.interleaved);
    ops::rope(s.qkv + Eq, B, L, Hkv, L * W, W, D, positions, rope.cos, rope.sin, l.rot, l.interleaved);
    for (int64_t b = 0; b < B; ++b)
        for (int64_t t = 0; t < L; ++t) {
            const float* row = s.qkv + (b * L + t) * W;
            const int64_t at = (b * cache.capacity + past + t) * Ekv;
            std::memcpy(cache.k + at, row + Eq, Ekv * sizeof(float));
            std::memcpy(cache.v + at, row + Eq + Ekv, Ekv * sizeof(float));
        }
    ops::AttentionArgs a;
    a.B = B;
    a.H = H;
    a.kv_group = H / Hkv;
    a.Lq = L;
    a.Lk = Lk;
    a.D = a.Dv = D;
    a.q = ops::HeadTensor{s.qkv, L * W, D, W};
    a.k = ops::HeadTensor{cache.k, cache.capacity * Ekv, D, Ekv};
    a.v = ops::HeadTensor{cache.v, cache.capacity * Ekv, D, Ekv};
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
    ops::scaled_dot_product_attention(a);
    project(l.out, M, s.ctx, x, 1.0f);  // x += W_o ctx
    ops::rms_norm(x, E, s.n, E, M, E, l.ffn_norm, l.eps);
    project(l.gate_up, M, s.n, s.gu);  // (M, 2F)
    ops::swiglu(s.gu, s.ff, M, F);
    project(l.down, M, s.ff, pending);
}

}  // namespace pyattn::layers

#include "layers/encoder_layer.h"

#include "cpu/cpu.h"
#include "gemm/gemm.h"
#include "layers/steps.h"
#include "ops/attention.h"

namespace pyattn::layers {
namespace {

// The attention of B sequences of L rows over `heads` heads of E / l.heads columns, read in place from qkv (rows of
// 3E: Q, K, V) and written into ctx (rows of E), both pointing at the first head.
ops::AttentionArgs self_attention(const EncoderLayer& l, int64_t B, int64_t L, int64_t E, int64_t heads,
                                  const float* qkv, float* ctx) {
    const int64_t D = E / l.heads;
    ops::AttentionArgs a;
    a.B = B;
    a.H = heads;
    a.Lq = a.Lk = L;
    a.D = a.Dv = D;
    a.q = ops::HeadTensor{qkv, L * 3 * E, D, 3 * E};
    a.k = ops::HeadTensor{qkv + E, L * 3 * E, D, 3 * E};
    a.v = ops::HeadTensor{qkv + 2 * E, L * 3 * E, D, 3 * E};
    a.out = ctx;
    a.out_sb = L * E;
    a.out_sh = D;
    a.out_sl = E;
    a.scale = l.scale;
    a.bf16 = gemm::bf16_attention(l.qkv.w->type());
    return a;
}

// ctx (B, L, E) = softmax(scale Q K^T + padding) V, heads read in place from qkv (B, L, 3E).
void attention(const EncoderLayer& l, int64_t B, int64_t L, int64_t E, const float* qkv, const uint8_t* key_padding,
               float* ctx) {
    ops::AttentionArgs a = self_attention(l, B, L, E, l.heads, qkv, ctx);
    if (key_padding) {
        a.key_padding_mask.data = key_padding;
        a.key_padding_mask.is_bool = true;
        a.key_padding_mask.sb = L;
    }
    ops::scaled_dot_product_attention(a);
}

// ctx (T, E) of B sequences packed one after another (sequence b: rows [offsets[b], offsets[b + 1])), each attending
// to itself only. One task per (sequence, head), each a one-head attention call on one thread: no padding is computed
// and no mask is needed.
void attention_packed(const EncoderLayer& l, int64_t B, const int64_t* offsets, int64_t E, const float* qkv,
                      float* ctx) {
    const int64_t H = l.heads, D = E / H;
    double flops = 0.0;
    for (int64_t b = 0; b < B; ++b) {
        const double n = static_cast<double>(offsets[b + 1] - offsets[b]);
        flops += 4.0 * n * n * static_cast<double>(E);
    }
    const int nt = cpu::threads_for(flops);
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) if (nt > 1)
    for (int64_t t = 0; t < B * H; ++t) {
        const int64_t b = t / H, h = t % H, row = offsets[b], n = offsets[b + 1] - row;
        if (n == 0) continue;
        // one thread inside the team
        ops::scaled_dot_product_attention(
            self_attention(l, 1, n, E, 1, qkv + row * 3 * E + h * D, ctx + row * E + h * D));
    }
}

// The layer's sub-layers over M rows; attend(qkv, ctx) is the attention between them.
template <class Attend>
void run_layer(const EncoderLayer& l, int64_t M, const float* x, float* y, const EncoderScratch& s, Attend attend) {
    const int64_t E = l.out.w->N();
    const auto none = kernels::Activation::none;
    if (l.norm_first) {
        norm(l.norm1, M, E, x, s.h);           // LN1(x)
        project(l.qkv, M, s.h, s.qkv, none);   // (M, 3E)
        attend(s.qkv, s.ctx);                  // (M, E)
        project(l.out, M, s.ctx, y, none);     // y = W_o ctx
        add_rows(y, x, M, E);                  // h = x + W_o ctx
        norm(l.norm2, M, E, y, s.h);           // LN2(h)
        project(l.ffn1, M, s.h, s.ff, l.act);  // act(W_1 LN2(h))
        project(l.ffn2, M, s.ff, s.h, none);   // W_2 ...
        add_rows(y, s.h, M, E);                // y = h + W_2 ...
    } else {
        project(l.qkv, M, x, s.qkv, none);
        attend(s.qkv, s.ctx);
        project(l.out, M, s.ctx, s.h, none);
        norm(l.norm1, M, E, s.h, y, x);  // h = LN1(W_o ctx + x), in y
        project(l.ffn1, M, y, s.ff, l.act);
        project(l.ffn2, M, s.ff, s.h, none);
        norm(l.norm2, M, E, y, y, s.h);  // y = LN2(h + W_2 ...), in place
    }
}

}  // namespace

void encoder_layer(const EncoderLayer& l, int64_t B, int64_t L, const float* x, const uint8_t* key_padding, float* y,
                   const EncoderScratch& s) {
    const int64_t E = l.out.w->N();
    run_layer(l, B * L, x, y, s, [&](const float* qkv, float* ctx) { attention(l, B, L, E, qkv, key_padding, ctx); });
}

void encoder_layer_packed(const EncoderLayer& l, int64_t B, const int64_t* offsets, const float* x, float* y,
                          const EncoderScratch& s) {
    const int64_t E = l.out.w->N();
    run_layer(l, offsets[B], x, y, s,
              [&](const float* qkv, float* ctx) { attention_packed(l, B, offsets, E, qkv, ctx); });
}

}  // namespace pyattn::layers

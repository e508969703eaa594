#include "layers/cross_decoder_layer.h"

#include <cstring>

#include "layers/steps.h"
#include "ops/attention.h"

namespace pyattn::layers {
namespace {

// out = W_o SelfAttn(W_qkv in), the step's K and V written into the cache first.
void self_attention(const CrossDecoderLayer& l, int64_t B, int64_t L, const float* in, float* out, const SelfCache& c,
                    const CrossDecoderScratch& s) {
    const int64_t E = l.self_out.w->N(), H = l.heads, D = E / H, M = B * L, Lk = c.past + L;
    project(l.qkv, M, in, s.qkv);
    for (int64_t b = 0; b < B; ++b)
        for (int64_t i = 0; i < L; ++i) {
            const float* row = s.qkv + (b * L + i) * 3 * E;
            const int64_t at = (b * c.capacity + c.past + i) * E;
            std::memcpy(c.k + at, row + E, static_cast<std::size_t>(E) * sizeof(float));
            std::memcpy(c.v + at, row + 2 * E, static_cast<std::size_t>(E) * sizeof(float));
        }
    ops::AttentionArgs a;
    a.B = B;
    a.H = H;
    a.Lq = L;
    a.Lk = Lk;
    a.D = a.Dv = D;
    a.q = ops::HeadTensor{s.qkv, L * 3 * E, D, 3 * E};
    a.k = ops::HeadTensor{c.k, c.capacity * E, D, E};
    a.v = ops::HeadTensor{c.v, c.capacity * E, D, E};
    a.out = s.ctx;
    a.out_sb = L * E;
    a.out_sh = D;
    a.out_sl = E;
    a.causal = c.causal;
    a.causal_offset = c.past;
    a.scale = l.self_scale;
    if (c.key_padding) {
        a.key_padding_mask.data = c.key_padding;
        a.key_padding_mask.sb = Lk;
    }
    ops::scaled_dot_product_attention(a);
    project(l.self_out, M, s.ctx, out);
}

// out = W_co CrossAttn(W_q in, memory K / V); out may be `in`.
void cross_attention(const CrossDecoderLayer& l, int64_t B, int64_t L, const float* in, float* out, const MemoryKV& m,
                     const CrossDecoderScratch& s) {
    const int64_t E = l.self_out.w->N(), H = l.heads, D = E / H, M = B * L, g = B / m.rows;
    project(l.q, M, in, s.qkv);  // (M, E): row r of the memory reads query rows [r g L, (r + 1) g L)
    ops::AttentionArgs a;
    a.B = m.rows;
    a.H = H;
    a.Lq = g * L;
    a.Lk = m.length;
    a.D = a.Dv = D;
    a.q = ops::HeadTensor{s.qkv, g * L * E, D, E};
    a.k = ops::HeadTensor{m.k, H * m.capacity * D, m.capacity * D, D, m.f16};
    a.v = ops::HeadTensor{m.v, H * m.capacity * D, m.capacity * D, D, m.f16};
    a.out = s.ctx;
    a.out_sb = g * L * E;
    a.out_sh = D;
    a.out_sl = E;
    a.scale = l.cross_scale;
    if (m.key_padding) {
        a.key_padding_mask.data = m.key_padding;
        a.key_padding_mask.sb = m.length;
    }
    ops::scaled_dot_product_attention(a);
    project(l.cross_out, M, s.ctx, out);
}

}  // namespace

void cross_decoder_layer(const CrossDecoderLayer& l, int64_t B, int64_t L, const float* x, float* y, const SelfCache& c,
                         const MemoryKV& m, const CrossDecoderScratch& s) {
    const int64_t E = l.self_out.w->N(), M = B * L;
    if (l.norm_first) {
        norm(l.norm1, M, E, x, s.h);               // LN1(x)
        self_attention(l, B, L, s.h, y, c, s);     // y = W_o SelfAttn(...)
        add_rows(y, x, M, E);                      // h = x + W_o SelfAttn(...)
        norm(l.norm2, M, E, y, s.h);               // LN2(h)
        cross_attention(l, B, L, s.h, s.h, m, s);  // W_co CrossAttn(...)
        add_rows(y, s.h, M, E);                    // h += W_co CrossAttn(...)
        norm(l.norm3, M, E, y, s.h);               // LN3(h)
        project(l.ffn1, M, s.h, s.ff, l.act);      // act(W_1 LN3(h))
        project(l.ffn2, M, s.ff, s.h);             // W_2 ...
        add_rows(y, s.h, M, E);                    // y = h + W_2 ...
    } else {
        self_attention(l, B, L, x, s.h, c, s);
        norm(l.norm1, M, E, s.h, y, x);  // h = LN1(W_o SelfAttn(x) + x), in y
        cross_attention(l, B, L, y, s.h, m, s);
        norm(l.norm2, M, E, y, y, s.h);  // h = LN2(h + W_co CrossAttn(h)), in place
        project(l.ffn1, M, y, s.ff, l.act);
        project(l.ffn2, M, s.ff, s.h);
        norm(l.norm3, M, E, y, y, s.h);  // y = LN3(h + W_2 act(W_1 h)), in place
    }
}

}  // namespace pyattn::layers

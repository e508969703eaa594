// One transformer encoder layer in one call, so that a forward pass costs one call per layer from Python instead of
// about ten (projections, attention, residual adds, norms, activations): at batch 1 the Python glue between the
// GEMMs was a large share of the time.
//
//   post-LN (the paper, BERT):  h = LN1(x + W_o Attn(W_qkv x));   y = LN2(h + W_2 act(W_1 h))
//   pre-LN (Whisper, GPT-2):    h = x + W_o Attn(W_qkv LN1(x));   y = h + W_2 act(W_1 LN2(h))
//
// Shapes: x, y (B, L, E) contiguous, y not overlapping x; key_padding (B, L) bytes, nonzero = padding (masked out),
// or null. The projections are packed matrices of any weight type: W_qkv E -> 3E (Q, K, V concatenated), W_o E -> E,
// W_1 E -> F, W_2 F -> E, each with an optional bias. Attention: `heads` heads of E / heads, scale as given, the
// fused kernel of ops/attention.h reading the heads in place. The scratch buffers hold B L x 3E (qkv), B L x E (ctx
// and h) and B L x F (ff) floats.
#pragma once
#include <cstdint>

#include "gemm/packed_matrix.h"
#include "kernels/kernels.h"

namespace pyattn::layers {

struct Projection {
    const gemm::PackedMatrix* w;
    const float* bias;  // or null
};

struct Norm {
    const float* weight;  // E floats, or null (1)
    const float* bias;    // E floats, or null (0)
    float eps;
};

struct EncoderLayer {
    Projection qkv, out, ffn1, ffn2;
    Norm norm1, norm2;
    int64_t heads;
    float scale;
    kernels::Activation act;
    bool norm_first;
};

struct EncoderScratch {
    float *qkv, *ctx, *h, *ff;
};

void encoder_layer(const EncoderLayer& l, int64_t B, int64_t L, const float* x, const uint8_t* key_padding, float* y,
                   const EncoderScratch& s);

// The same over B sequences packed without padding: x, y (T, E), sequence b the rows [offsets[b], offsets[b + 1]),
// offsets[0] = 0, non-decreasing, offsets[B] = T; each sequence attends to itself only. The scratch holds T rows. A
// batch of mixed lengths costs its real tokens, not B times the longest (text-embeddings-inference serves this way).
void encoder_layer_packed(const EncoderLayer& l, int64_t B, const int64_t* offsets, const float* x, float* y,
                          const EncoderScratch& s);

}  // namespace pyattn::layers

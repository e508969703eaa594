// One decoding step of a transformer decoder layer with encoder-decoder attention (the paper's decoder, Whisper's,
// BART's) in one call: Python's ten-odd calls per layer and step (norms, projections, cache writes, two attentions,
// residual adds) were a tenth of a Whisper decoding step.
//
//   pre-LN (Whisper):  h = x + W_o SelfAttn(W_qkv LN1(x));   h += W_co CrossAttn(W_q LN2(h));
//                      y = h + W_2 act(W_1 LN3(h))
//   post-LN (the paper, BART):  h = LN1(x + W_o SelfAttn(W_qkv x));   h = LN2(h + W_co CrossAttn(W_q h));
//                               y = LN3(h + W_2 act(W_1 h))
//
// The same operations in the same order as pyattn.nn.TransformerDecoderLayer op by op: the same bits.
//
// Self-attention: the step's keys and values are written into the layer's cache, rows of E (B, capacity, E), at
// positions [past, past + L) (capacity >= past + L), and its queries attend to positions [0, past + L): causal from
// `past` where asked, minus a key padding of (B, past + L) bytes (nonzero = padding) where given.
// Cross-attention: the encoder output's K and V held head-major (rows, H, capacity, D), float32 or float16, their first
// `length` positions; B = g rows, decoder rows g r .. g r + g - 1 (beams) reading memory row r, their queries folded
// into one row of g L queries (the memory read once per row); a memory padding of (rows, length) bytes, or none.
// Shapes: x, y (B, L, E) contiguous, y not overlapping x. W_qkv E -> 3E (Q, K, V), W_o, W_q, W_co E -> E, W_1 E -> F,
// W_2 F -> E, packed matrices of any weight type, each with an optional bias.
#pragma once
#include <cstdint>

#include "layers/encoder_layer.h"

namespace pyattn::layers {

struct CrossDecoderLayer {
    Projection qkv, self_out, q, cross_out, ffn1, ffn2;
    Norm norm1, norm2, norm3;
    int64_t heads;
    float self_scale, cross_scale;
    kernels::Activation act;
    bool norm_first;
};

struct SelfCache {
    float *k, *v;  // (B, capacity, E)
    int64_t capacity, past;
    const uint8_t* key_padding;  // (B, past + L), or null
    bool causal;
};

struct MemoryKV {
    const void *k, *v;  // (rows, H, capacity, D), float32 or float16
    int64_t rows, capacity, length;
    bool f16;
    const uint8_t* key_padding;  // (rows, length), or null
};

// The encoder layer's four buffers, here of B L rows: qkv B L x 3E, ctx and h B L x E, ff B L x F floats.
using CrossDecoderScratch = EncoderScratch;

void cross_decoder_layer(const CrossDecoderLayer& l, int64_t B, int64_t L, const float* x, float* y, const SelfCache& c,
                         const MemoryKV& m, const CrossDecoderScratch& s);

}  // namespace pyattn::layers

// One Llama-family decoder layer (pre-RMSNorm, rotary positions, grouped-query attention over a KV cache, SwiGLU) in
// one call, and the whole stack in one call: a decoding step of a 30-layer model costs one call from Python instead
// of about 30 x 10.
//
//   n = RMSNorm_attn(x)          (x += pending first: the previous layer's FFN output, added in the same pass)
//   q, k, v = W_qkv n            one GEMM; RoPE on q and k where they lie, at the rows' positions (after an RMSNorm of
//                                each q and k head over its D values where the layer has q_norm / k_norm: Qwen3)
//   cache[past .. past + L) = k, v
//   x += W_o Attn(q, cache)      causal from `past` (within a sliding window where the layer has one: Gemma's local
//                                layers), key padding, query head h reads K/V head h / (H / Hkv)
//   pending = W_down (act(W_gate m) * W_up m),  m = RMSNorm_ffn(x); act silu (SwiGLU) or gelu_tanh (GeGLU: Gemma)
//
// Gemma's sandwich norms: where the layer has post_attn_norm / post_ffn_norm, the attention's and the FFN's outputs
// are each RMS-normalised before they are added to the residual stream (x += RMSNorm_post(W_o Attn(...)), pending =
// RMSNorm_post_ffn(W_down ...)).
//
// Shapes (W_qkv may be three matrices, DecoderLayer::qkv): x, pending (B, L, E) contiguous; positions (B, L); the cache
// of a layer is k, v (B, Hkv, capacity, D), positions [0, past + L) valid after the call; key_padding (B, past + L)
// bytes, nonzero = padding, or null. W_qkv maps E -> (H + 2 Hkv) D (Q, K, V rows stacked), W_o H D -> E, W_gate_up E ->
// 2F (gate rows, then up rows), W_down F -> E, all packed matrices of any weight type. rope tables: cos / sin (n_pos,
// rot / 2), positions < n_pos (the caller's check).
#pragma once
#include <cstdint>

#include "layers/encoder_layer.h"

namespace pyattn::layers {

struct DecoderLayer {
    // W_qkv as one matrix (qkv_parts 1) or as three, Q, K and V (GGUF files whose V is of another block type than Q and
    // K: each part read as stored), the rows of qkv[0 .. qkv_parts) in that order.
    Projection qkv[3];
    int qkv_parts = 1;
    Projection out, gate_up, down;
    const float* attn_norm;  // E floats
    const float* ffn_norm;
    const float* q_norm = nullptr;          // D floats, or null: no norm of the query heads (Qwen3 has one, Llama not)
    const float* k_norm = nullptr;          // D floats, or null: of the key heads
    const float* post_attn_norm = nullptr;  // E floats, or null: the attention's output added as it is
    const float* post_ffn_norm = nullptr;   // E floats, or null: the FFN's output added as it is
    float eps;
    int64_t heads, kv_heads, head_dim, rot;
    bool interleaved;    // RoPE pairs (2i, 2i + 1) as GGUF stores Q / K, else (i, i + rot / 2) as Hugging Face
    float scale;         // of the attention's scores
    int64_t window = 0;  // a sliding window: keys a query sees at most (0: all before it)
    float softcap = 0;   // the scores soft-capped by tanh to (-softcap, softcap) (Gemma 2), 0: not
    kernels::Activation act = kernels::Activation::silu;  // of the FFN's gate
    int rope = 0;                                         // the rotary tables of the stack this layer reads
};

struct RopeTables {
    const float *cos, *sin;
};

// K and V of a layer, head-major: element (b, g, t, d) at ((b Hkv + g) capacity + t) D + d, so that each head's
// keys are one contiguous stream (a decoding step reads them cold; rows at a stride of Hkv D measured 1.5x slower).
// With f16 the elements are float16 (half the bytes a decoding step reads; values beyond +-65504 become inf).
struct LayerCache {
    void *k, *v;
    int64_t capacity;  // positions per (batch entry, head)
    bool f16 = false;
};

struct DecoderScratch {
    float *n, *qkv, *ctx, *gu, *ff;  // (M, E), (M, (H + 2 Hkv) D), (M, H D), (M, 2F), (M, F); M = B L
    float* o;                        // (M, E): a sub-layer's output before its post-norm (layers with post-norms)
};

// Up to team_rows() rows (B L; default 8, at most gemm::kSmallM) decoder_stack runs as one parallel region (a
// decoding step; decoder_layer.cpp's layer_team); above, layer by layer with each op's own threads. Tunable for tests
// and benchmarks/gym (_core._tune_team_rows; 0: never).
int64_t team_rows();
void set_team_rows(int64_t rows);
// Bytes of weights per chunk of a product's columns that the team's threads share (decoder_layer.cpp's Steal): -1
// (the default) by matrix and thread count, 0 a fixed 16 KiB without stealing, else fixed; tunable for tests and
// benchmarks/gym (_core._tune_team_chunk).
int64_t team_chunk_bytes();
void set_team_chunk_bytes(int64_t bytes);

// x (B, L, E) in place; pending: in, the previous layer's output (ignored when !has_pending), out, this layer's.
void decoder_layer(const DecoderLayer& l, int64_t B, int64_t L, float* x, float* pending, bool has_pending,
                   const int64_t* positions, const RopeTables& rope, const LayerCache& cache, int64_t past,
                   const uint8_t* key_padding, const DecoderScratch& s);

// The `count` layers over x (B, L, E) in place; pending: out, the last layer's FFN output (the caller adds it before
// the final norm). Layer i reads and writes caches[i] and rotates with ropes[layers[i]->rope] (Gemma's local and
// global layers have tables of their own). Layers share E (and the scratch sized for the largest).
void decoder_stack(const DecoderLayer* const* layers, int64_t count, int64_t B, int64_t L, float* x, float* pending,
                   const int64_t* positions, const RopeTables* ropes, const LayerCache* caches, int64_t past,
                   const uint8_t* key_padding, const DecoderScratch& s);

}  // namespace pyattn::layers

// Scaled dot-product attention, fused:  out = softmax(scale * Q K^T + mask) V.
//
// Shapes: q (B, H, Lq, D), k (B, Hkv, Lk, D), v (B, Hkv, Lk, Dv), out (B, H, Lq, Dv), where Hkv divides H:
// grouped-query attention (Hkv = H is multi-head attention, Hkv = 1 multi-query) -- query head h reads K/V head
// h / (H / Hkv), in place, never a repeated copy. Each is a strided view:
// element (b, h, l, d) at data[b * sb + h * sh + l * sl + d] (the last axis contiguous), so heads can be
// column blocks of a (B, L, H * D) projection output and `out` can be written straight into (B, Lq, H * Dv).
//
// Masks (either may be absent; they combine):
//   attn_mask  element (b, h, i, j) at data[b * sb + h * sh + i * sq + j]; a zero stride broadcasts.
//   key_padding_mask  the same form with sh = sq = 0 (one row of Lk per batch entry).
//   A bool (uint8) mask means True = masked out (-inf before the softmax); a float mask is added.
//   causal: key j is visible to query i iff j <= i + causal_offset (0: torch's is_causal, top-left aligned;
//   Lk - Lq: the bottom-right alignment of a query block appended to a KV cache).
//   window (with causal): key j is visible to query i only if j > i + causal_offset - window as well, the last
//   `window` keys up to the query's own (a sliding-window layer: Gemma 2 and 3); 0: no such limit.
// Soft-capping (softcap > 0, Gemma 2): each scaled score s becomes softcap tanh(s / softcap) before the masks.
// A query whose keys are all masked gets a zero output row (and zero weights), not NaN.
// The direct path (no weights; Lq <= 4, or Lq <= 16 for multi-head attention without the causal mask) computes
// plain dot products over K and V in place, one pass over a K/V head for the query heads that share it, or for up to
// 16 rows of one head when every row sees the same keys. Each row's result is the same bits however many share the
// pass. Batch invariance: there, a batch entry's leading keys masked by a bool key_padding_mask are skipped, so a
// left-padded row's output equals, bit for bit, that of the row without them.
//
// Algorithm: per (b, h, block of queries), keys are visited in blocks; each block's scores are computed with
// the GEMM micro-kernel against packed K, masked in the tile, folded into a running (online) softmax -- row
// max m, row sum l, and the output rescaled by exp(m_old - m_new) -- and P V is accumulated with the same
// micro-kernel against packed V. The Lq x Lk matrix is never formed. With `weights` non-null the scores are
// materialised instead (weights: contiguous (B, H, Lq, Lk)) and out = weights V.
//
// K and V may both be float16 (a KV cache of half the bytes): the decoding path widens each element as it loads it,
// the blocked path as it packs a head; the arithmetic is float32 as before. Not with `weights`.
#pragma once
#include <cstdint>

namespace pyattn::ops {

struct HeadTensor {  // a (B, H, L, D) view with contiguous last axis (strides in elements)
    const void* data;
    int64_t sb, sh, sl;
    bool f16 = false;  // float16 elements (K and V only: a float16 KV cache), else float32
};

struct MaskRef {
    const void* data = nullptr;  // uint8 (bool) or float32
    bool is_bool = true;
    int64_t sb = 0, sh = 0, sq = 0;
};

struct AttentionArgs {
    int64_t B, H, Lq, Lk, D, Dv;
    int64_t kv_group = 1;  // H / Hkv: query heads per K/V head
    HeadTensor q, k, v;
    float* out;
    int64_t out_sb, out_sh, out_sl;
    MaskRef attn_mask, key_padding_mask;
    bool causal = false;
    int64_t causal_offset = 0;
    int64_t window = 0;    // with causal: the keys a query sees at most (its own and those before); 0: all
    float softcap = 0.0f;  // > 0: scores soft-capped to (-softcap, softcap) by tanh (Gemma 2); 0: not
    float scale;
    float* weights = nullptr;
    // Allows Q K^T and P V on bfloat16 roundings of Q, K, the probabilities and V, summed in float32, where the CPU
    // multiplies bfloat16 pairs (KernelSet::bf16pairs) and the flash path runs; float32 otherwise. Softmax, its
    // running max and sum, and the output stay float32. Float32 K and V only.
    bool bf16 = false;
};

void scaled_dot_product_attention(const AttentionArgs& a);

// The decoding (direct) algorithm's tasks: attention_tasks(a) of them, task t = (b Hkv + g) Lq + i being query row
// i of the H / Hkv query heads that share K/V head g (they read each key and value row once), or, for multi-head
// attention without the causal mask, a block of up to 16 rows of head g. attention_rows computes
// tasks [t0, t1) on the calling thread alone; a.weights must be null. For a caller that runs a decoding step in one
// parallel region and splits the tasks over its team itself.
int64_t attention_tasks(const AttentionArgs& a);
void attention_rows(const AttentionArgs& a, int64_t t0, int64_t t1);

}  // namespace pyattn::ops

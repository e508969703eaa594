#include "layers/decoder_layer.h"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <vector>

#include "cpu/buffer.h"
#include "cpu/cpu.h"
#include "cpu/steal.h"
#include "gemm/gemm.h"
#include "layers/steps.h"
#include "ops/activations.h"
#include "ops/attention.h"
#include "ops/rms_norm.h"
#include "ops/rope.h"

namespace pyattn::layers {
namespace {

// The heads of W_qkv's part p (all of Q, K and V when it is one matrix) and the first of them.
int64_t part_heads(const DecoderLayer& l, int p, int64_t& first) {
    if (l.qkv_parts == 1) {
        first = 0;
        return l.heads + 2 * l.kv_heads;
    }
    first = p == 0 ? 0 : l.heads + (p - 1) * l.kv_heads;
    return p == 0 ? l.heads : l.kv_heads;
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
    a.window = l.window;
    a.softcap = l.softcap;
    a.scale = l.scale;
    // a bfloat16 model's prefill products in bfloat16 too; not an int8 or 4-bit one's (gemm::bf16_attention): over 30
    // layers of SmolLM2 that took the min logit cosine to float32 from 0.987 to 0.969 (tests/test_llama.py)
    a.bf16 = l.qkv[0].w->type() == gemm::WeightType::bf16;
    return a;
}

// The per-head RMSNorm (q_norm / k_norm, the layer's eps) of heads [h0, h1) of the rows in qkv (M, (H + 2 Hkv) D), in
// place; heads without a norm (V, or a layer without them) are left as they are.
void norm_heads(const DecoderLayer& l, int64_t M, float* qkv, int64_t h0, int64_t h1) {
    const int64_t D = l.head_dim, W = (l.heads + 2 * l.kv_heads) * D;
    for (int64_t h = h0; h < std::min(h1, l.heads + l.kv_heads); ++h) {
        const float* w = h < l.heads ? l.q_norm : l.k_norm;
        if (w) ops::rms_norm(qkv + h * D, W, qkv + h * D, W, M, D, w, l.eps);
    }
}

// A post-norm (Gemma's sandwich): x (M, E) += RMSNorm(o) with weight w, or x = RMSNorm(o) when !add; o is
// normalised in place.
void post_norm(float* x, float* o, int64_t M, int64_t E, const float* w, float eps, bool add = true) {
    const kernels::KernelSet& ks = cpu::active();
    for (int64_t r = 0; r < M; ++r) {
        ks.rms_norm(o + r * E, add ? o + r * E : x + r * E, w, E, eps);
        if (add) ks.add(x + r * E, o + r * E, E);
    }
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

// The threads of a step share its units by cpu::Steal. The two threads of a decoding step do not share the memory
// bandwidth evenly: split in halves, one waited for the other 28-57 us of a 240-270 us layer (SmolLM2 q4_1, 2 threads,
// Zen 3; timers around each barrier, a /tmp probe).
using cpu::Steal;

// A product's columns in chunks of whole panels that the team's threads share: small enough that the threads finish
// within a chunk of each other, large enough that each chunk streams and that the per-chunk work (a unit taken, a
// gemm_cols call) stays small beside it. By default (team_chunk_bytes() < 0) a matrix's bytes / (4 per thread),
// within [kChunkBytes, kMaxChunkBytes], and one chunk on one thread. A fixed 16 KiB had been one panel of a 2048-wide
// K-quant matrix per chunk: on the Llama-3.2-1B-shaped Q4_K_M (benchmarks/synthetic_gguf.py; /tmp probe sweeping
// _tune_team_chunk, Zen 4, min of 8 steps, 3 rounds) a decoding step took 47.6-48.9 ms at 1 thread against 37.1-38.1
// with the whole range, 65 KiB 40.5-41.3, 256 KiB 37.5-38.9; at 2 threads 29.6-33.5 against 26.5-28.1 at 256 KiB.
constexpr int64_t kChunkBytes = 16384, kMaxChunkBytes = 262144, kChunksPerThread = 4;
std::atomic<int64_t> g_chunk_bytes{-1};  // < 0: by matrix; 0: kChunkBytes, no stealing (for tests, benchmarks/gym)
template <typename Work>
void steal_cols(const Steal& st, const gemm::PackedMatrix& w, int64_t n, Work&& work) {
    const int64_t setting = g_chunk_bytes.load(std::memory_order_relaxed);
    if (setting < 0 && st.nth == 1) return work(int64_t{0}, n);
    const int64_t bytes = setting > 0 ? setting
                          : setting == 0
                              ? kChunkBytes
                              : std::clamp<int64_t>(static_cast<int64_t>(w.size_bytes()) / (st.nth * kChunksPerThread),
                                                    kChunkBytes, kMaxChunkBytes);
    const int64_t chunk = gemm::chunk_cols(w, bytes);
    st.run((n + chunk - 1) / chunk, [&](int64_t u) { work(u * chunk, std::min(n, (u + 1) * chunk)); });
}

// The team's shared steps per layer: W_qkv's parts (up to 3), attention, W_o, the FFN width, W_down.
constexpr int kSteps = 7;

// One layer as one thread of a team (the rows are few: a decoding step). Between the team's barriers the threads
// share the step's units (`steps`, kSteps per layer; Steal): the Q/K/V heads (a part's after the previous part's) (RoPE
// and the cache writes of a thread's heads follow their columns), the attention's tasks, chunks of the columns of W_o
// and W_down (added to x in the GEMM's epilogue, beta = 1, instead of in the next norm), and chunks of the FFN width
// (gate and up columns, then SwiGLU on them). The norms are computed by every thread into its own buffer, and each
// thread quantizes a product's input once for all the chunks it takes. Five barriers per layer; nothing else
// synchronises. A layer with post-norms (Gemma) writes W_o's and W_down's outputs to s.o instead, and one thread
// normalises and adds them once all columns are there: two barriers more.
void layer_team(const DecoderLayer& l, int64_t B, int64_t L, float* x, float* out, float beta_out,
                const int64_t* positions, const RopeTables& rope, const LayerCache& cache, int64_t past,
                const uint8_t* key_padding, const DecoderScratch& s, float* n, const Steal* steps) {
    const kernels::KernelSet& ks = cpu::active();
    const int64_t M = B * L, E = l.out.w->N(), H = l.heads, Hkv = l.kv_heads, D = l.head_dim;
    const int64_t Eq = H * D, W = Eq + 2 * Hkv * D, F = l.down.w->K();
    ops::rms_norm(x, E, n, E, M, E, l.attn_norm, l.eps);  // one thread's call inside the team: no nested region
    // The heads' columns first, then their RoPE and cache writes, so that the weights stream without a pause. (RoPE
    // per head had made this step 53 -> 66 us a layer at 1 thread, but that was its parallel region, since removed:
    // cpu::parallel_rows. Whether the order still matters was not measured.) A part's input is made ready (quantized
    // for its type) by a thread once it takes one of the part's heads.
    thread_local std::vector<int64_t> heads;
    heads.clear();
    for (int p = 0; p < l.qkv_parts; ++p) {
        int64_t first;
        const int64_t count = part_heads(l, p, first);
        const Projection& w = l.qkv[p];
        const gemm::Epilogue ep{w.bias, kernels::Activation::none};
        gemm::ColsInput nq;
        bool ready = false;
        steps[p].run(count, [&](int64_t h) {
            if (!ready) {
                nq = gemm::cols_input(M, n, E, *w.w);
                ready = true;
            }
            gemm::gemm_cols(nq, *w.w, s.qkv + first * D, W, 0.0f, ep, h * D, (h + 1) * D);
            heads.push_back(first + h);
        });
    }
    for (const int64_t h : heads) {
        norm_heads(l, M, s.qkv, h, h + 1);
        if (h < H + Hkv)  // a query or key head: rotated in place
            ops::rope(s.qkv + h * D, B, L, 1, L * W, W, D, positions, rope.cos, rope.sin, l.rot, l.interleaved);
        if (h >= H) write_cache(l, B, L, cache, past, s.qkv, (h - H) % Hkv, (h - H) % Hkv + 1, h >= H + Hkv);
    }
#pragma omp barrier
    const ops::AttentionArgs a = attention_args(l, B, L, cache, past, key_padding, s);
    steps[3].run(ops::attention_tasks(a), [&](int64_t t) { ops::attention_rows(a, t, t + 1); });
#pragma omp barrier
    const gemm::ColsInput cq = gemm::cols_input(M, s.ctx, Eq, *l.out.w);
    const gemm::Epilogue out_ep{l.out.bias, kernels::Activation::none};
    float* attn_out = l.post_attn_norm ? s.o : x;  // x += W_o ctx in the epilogue unless a post-norm comes between
    steal_cols(steps[4], *l.out.w, E, [&](int64_t c0, int64_t c1) {
        gemm::gemm_cols(cq, *l.out.w, attn_out, E, l.post_attn_norm ? 0.0f : 1.0f, out_ep, c0, c1);
    });
#pragma omp barrier
    if (l.post_attn_norm) {
#pragma omp single
        post_norm(x, s.o, M, E, l.post_attn_norm, l.eps);  // (the single's barrier follows)
    }
    ops::rms_norm(x, E, n, E, M, E, l.ffn_norm, l.eps);
    const gemm::ColsInput gq = gemm::cols_input(M, n, E, *l.gate_up.w);
    const gemm::Epilogue gu{l.gate_up.bias, kernels::Activation::none};
    steal_cols(steps[5], *l.gate_up.w, F, [&](int64_t f0, int64_t f1) {
        gemm::gemm_cols(gq, *l.gate_up.w, s.gu, 2 * F, 0.0f, gu, f0, f1);
        gemm::gemm_cols(gq, *l.gate_up.w, s.gu, 2 * F, 0.0f, gu, F + f0, F + f1);
        for (int64_t r = 0; r < M; ++r)
            ks.gate_mul(s.gu + r * 2 * F + f0, s.gu + r * 2 * F + F + f0, s.ff + r * F + f0, f1 - f0, l.act);
    });
#pragma omp barrier
    const gemm::ColsInput fq = gemm::cols_input(M, s.ff, F, *l.down.w);
    const gemm::Epilogue down_ep{l.down.bias, kernels::Activation::none};
    float* ffn_out = l.post_ffn_norm ? s.o : out;
    const float beta = l.post_ffn_norm ? 0.0f : beta_out;
    steal_cols(steps[6], *l.down.w, E,
               [&](int64_t c0, int64_t c1) { gemm::gemm_cols(fq, *l.down.w, ffn_out, E, beta, down_ep, c0, c1); });
#pragma omp barrier
    if (l.post_ffn_norm) {
#pragma omp single
        post_norm(out, s.o, M, E, l.post_ffn_norm, l.eps, beta_out != 0.0f);  // the last layer's output alone
    }
}

std::atomic<int64_t> g_team_rows{8};

}  // namespace

int64_t team_rows() { return g_team_rows.load(std::memory_order_relaxed); }
int64_t team_chunk_bytes() { return g_chunk_bytes.load(std::memory_order_relaxed); }
void set_team_chunk_bytes(int64_t bytes) {
    g_chunk_bytes.store(std::max<int64_t>(bytes, -1), std::memory_order_relaxed);
}
void set_team_rows(int64_t rows) {
    g_team_rows.store(std::clamp<int64_t>(rows, 0, gemm::kSmallM), std::memory_order_relaxed);
}

void decoder_stack(const DecoderLayer* const* layers, int64_t count, int64_t B, int64_t L, float* x, float* pending,
                   const int64_t* positions, const RopeTables* ropes, const LayerCache* caches, int64_t past,
                   const uint8_t* key_padding, const DecoderScratch& s) {
    const int64_t M = B * L;
    if (M > team_rows()) {
        for (int64_t i = 0; i < count; ++i)
            decoder_layer(*layers[i], B, L, x, pending, i > 0, positions, ropes[layers[i]->rope], caches[i], past,
                          key_padding, s);
        return;
    }
    const int64_t E = layers[0]->out.w->N();
    const int nt = omp_in_parallel() ? 1 : cpu::num_threads();
    // the ranges of every step of every layer, per thread (count x kSteps x nt words, zeros)
    const auto taken = cpu::steal_words(count * kSteps, nt);
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        float* n = scratch<Slot::decoder_norm>(static_cast<std::size_t>(M * E));
        const int tid = omp_get_thread_num(), nth = omp_get_num_threads();
        const bool steal = team_chunk_bytes() != 0;
        for (int64_t i = 0; i < count; ++i) {
            const bool last = i + 1 == count;  // the last layer's FFN output goes to `pending`, the others into x
            Steal steps[kSteps];
            for (int k = 0; k < kSteps; ++k) steps[k] = Steal{taken.get() + (kSteps * i + k) * nt, tid, nth, steal};
            layer_team(*layers[i], B, L, x, last ? pending : x, last ? 0.0f : 1.0f, positions, ropes[layers[i]->rope],
                       caches[i], past, key_padding, s, n, steps);
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
    for (int p = 0; p < l.qkv_parts; ++p) {  // (M, W)
        int64_t first;
        part_heads(l, p, first);
        project(l.qkv[p], M, s.n, s.qkv + first * D, kernels::Activation::none, 0.0f, W);
    }
    norm_heads(l, M, s.qkv, 0, H + Hkv);
    ops::rope(s.qkv, B, L, H, L * W, W, D, positions, rope.cos, rope.sin, l.rot, l.interleaved);
    ops::rope(s.qkv + Eq, B, L, Hkv, L * W, W, D, positions, rope.cos, rope.sin, l.rot, l.interleaved);
    write_cache(l, B, L, cache, past, s.qkv, 0, Hkv, false);
    write_cache(l, B, L, cache, past, s.qkv, 0, Hkv, true);
    const ops::AttentionArgs a = attention_args(l, B, L, cache, past, key_padding, s);
    ops::scaled_dot_product_attention(a);
    if (l.post_attn_norm) {
        project(l.out, M, s.ctx, s.o);
        post_norm(x, s.o, M, E, l.post_attn_norm, l.eps);  // x += RMSNorm_post(W_o ctx)
    } else {
        project(l.out, M, s.ctx, x, kernels::Activation::none, 1.0f);  // x += W_o ctx
    }
    ops::rms_norm(x, E, s.n, E, M, E, l.ffn_norm, l.eps);
    project(l.gate_up, M, s.n, s.gu);  // (M, 2F)
    ops::swiglu(s.gu, s.ff, M, F, l.act);
    project(l.down, M, s.ff, pending);
    if (l.post_ffn_norm) ops::rms_norm(pending, E, pending, E, M, E, l.post_ffn_norm, l.eps);
}

}  // namespace pyattn::layers

// Whole-layer steps (cpp/layers/): argument checks, scratch from the result-block cache, the GIL released.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "bindings/bind_common.h"
#include "gemm/packed_matrix.h"
#include "layers/cross_decoder_layer.h"
#include "layers/decoder_layer.h"
#include "layers/encoder_layer.h"

namespace pyattn::bind {
namespace {

// The layers' shared argument checks: a projection's K -> N, and a vector of n float32 copied.
void want_shape(const gemm::PackedMatrix& m, int64_t k, int64_t n, const char* name) {
    if (m.K() != k || m.N() != n)
        value_error(std::string(name) + " maps " + std::to_string(m.K()) + " -> " + std::to_string(m.N()) +
                    " features, expected " + std::to_string(k) + " -> " + std::to_string(n));
}

std::vector<float> vector_of(const py::array& a, int64_t n, const char* name) {
    require_f32(a, name);
    if (a.ndim() != 1 || a.shape(0) != n)
        value_error(std::string("expected ") + name + " of shape (" + std::to_string(n) + ",), got " + shape_str(a));
    require_c_contiguous(a, name);
    return std::vector<float>(f32(a), f32(a) + n);
}

// A LayerNorm's weight (E,), bias (E,) or None, and eps, copied into wv / bv.
layers::Norm layer_norm_of(const py::array& w, const py::object& b, float eps, int64_t E, const char* name,
                           std::vector<float>& wv, std::vector<float>& bv) {
    wv = vector_of(w, E, (std::string(name) + "_weight").c_str());
    if (!b.is_none()) bv = vector_of(b.cast<py::array>(), E, (std::string(name) + "_bias").c_str());
    if (!(eps >= 0.0f) || !std::isfinite(eps)) value_error(std::string(name) + "_eps must be finite and >= 0");
    return layers::Norm{wv.data(), bv.empty() ? nullptr : bv.data(), eps};
}

// A bool mask of `shape` (C-contiguous) as bytes, or null for None.
const uint8_t* bool_mask(const py::object& obj, const std::vector<int64_t>& shape, const char* name, py::array& keep) {
    if (obj.is_none()) return nullptr;
    if (!py::isinstance<py::array>(obj)) type_error(std::string("expected ") + name + " to be a numpy array or None");
    keep = obj.cast<py::array>();
    if (!keep.dtype().is(py::dtype::of<bool>()))
        type_error(std::string("expected ") + name + " to be bool (True = padding), got " + dtype_str(keep));
    if (shape_of(keep) != shape)
        value_error(std::string("expected ") + name + " of shape (" + std::to_string(shape[0]) + ", " +
                    std::to_string(shape[1]) + "), got " + shape_str(keep));
    require_c_contiguous(keep, name);
    return static_cast<const uint8_t*>(keep.data());
}

// The whole-layer calls' scratch (layers::EncoderScratch, also the cross decoder's) for M rows, from the block
// cache: recently freed blocks are reused, so a model run faults few pages.
struct LayerScratch {
    py::array qkv, ctx, h, ff;
    layers::EncoderScratch views;
    LayerScratch(int64_t M, int64_t E, int64_t F)
        : qkv(empty_f32({M, 3 * E})),
          ctx(empty_f32({M, E})),
          h(empty_f32({M, E})),
          ff(empty_f32({M, F})),
          views{f32_mut(qkv), f32_mut(ctx), f32_mut(h), f32_mut(ff)} {}
};

class EncoderLayer {
public:
    EncoderLayer(const py::object& qkv, const py::object& out, const py::object& ffn1, const py::object& ffn2,
                 const py::array& norm1_weight, const py::object& norm1_bias, float norm1_eps,
                 const py::array& norm2_weight, const py::object& norm2_bias, float norm2_eps, int64_t num_heads,
                 const std::string& activation, bool norm_first, const py::object& scale)
        : refs_{qkv, out, ffn1, ffn2} {
        layers::EncoderLayer& l = l_;
        l.qkv.w = &packed_matrix_of(qkv, "qkv", &l.qkv.bias);
        l.out.w = &packed_matrix_of(out, "out", &l.out.bias);
        l.ffn1.w = &packed_matrix_of(ffn1, "ffn1", &l.ffn1.bias);
        l.ffn2.w = &packed_matrix_of(ffn2, "ffn2", &l.ffn2.bias);
        E_ = l.out.w->N();
        F_ = l.ffn1.w->N();
        want_shape(*l.out.w, E_, E_, "out");
        want_shape(*l.qkv.w, E_, 3 * E_, "qkv");
        want_shape(*l.ffn1.w, E_, F_, "ffn1");
        want_shape(*l.ffn2.w, F_, E_, "ffn2");
        if (num_heads < 1 || E_ % num_heads)
            value_error("num_heads (" + std::to_string(num_heads) + ") must divide d_model (" + std::to_string(E_) +
                        ")");
        l.heads = num_heads;
        l.scale = scale.is_none() ? 1.0f / std::sqrt(static_cast<float>(E_ / num_heads)) : scale.cast<float>();
        if (!std::isfinite(l.scale)) value_error("scale must be finite");
        l.act = parse_activation(activation);
        l.norm_first = norm_first;
        l.norm1 = layer_norm_of(norm1_weight, norm1_bias, norm1_eps, E_, "norm1", norm_[0], norm_[1]);
        l.norm2 = layer_norm_of(norm2_weight, norm2_bias, norm2_eps, E_, "norm2", norm_[2], norm_[3]);
    }

    py::array call(const py::array& x, const py::object& key_padding_mask) const {
        require_f32(x, "x");
        require_ndim(x, 3, "x", "(batch, seq, d_model)");
        require_nonempty(x, "x");
        require_c_contiguous(x, "x");
        const int64_t B = x.shape(0), L = x.shape(1), M = B * L;
        if (x.shape(2) != E_)
            value_error("expected x of shape (batch, seq, " + std::to_string(E_) + "), got " + shape_str(x));
        py::array keep;
        const uint8_t* kp = bool_mask(key_padding_mask, {B, L}, "key_padding_mask", keep);
        py::array y = empty_f32({B, L, E_});
        LayerScratch s(M, E_, F_);
        const float* xp = f32(x);
        float* yp = f32_mut(y);
        {
            py::gil_scoped_release nogil;
            layers::encoder_layer(l_, B, L, xp, kp, yp, s.views);
        }
        return y;
    }

    py::array packed(const py::array& x, const py::array& offsets) const {
        require_f32(x, "x");
        require_ndim(x, 2, "x", "(tokens, d_model)");
        require_c_contiguous(x, "x");
        const int64_t T = x.shape(0);
        if (x.shape(1) != E_)
            value_error("expected x of shape (tokens, " + std::to_string(E_) + "), got " + shape_str(x));
        if (!offsets.dtype().is(py::dtype::of<int64_t>()))
            type_error("expected offsets to be int64, got " + dtype_str(offsets));
        require_ndim(offsets, 1, "offsets", "(sequences + 1,)");
        require_c_contiguous(offsets, "offsets");
        const int64_t B = offsets.shape(0) - 1;
        if (B < 0) value_error("offsets must hold at least one entry (0)");
        const int64_t* off = static_cast<const int64_t*>(offsets.data());
        if (off[0] != 0 || off[B] != T)
            value_error("offsets must start at 0 and end at the " + std::to_string(T) + " rows of x, got " +
                        std::to_string(off[0]) + " ... " + std::to_string(off[B]));
        for (int64_t b = 0; b < B; ++b)
            if (off[b + 1] < off[b]) value_error("offsets must not decrease (entry " + std::to_string(b + 1) + ")");
        py::array y = empty_f32({T, E_});
        if (T == 0) return y;
        LayerScratch s(T, E_, F_);
        const float* xp = f32(x);
        float* yp = f32_mut(y);
        {
            py::gil_scoped_release nogil;
            layers::encoder_layer_packed(l_, B, off, xp, yp, s.views);
        }
        return y;
    }

private:
    py::object refs_[4];  // the PackedLinear objects whose matrices l_ points into
    std::vector<float> norm_[4];
    layers::EncoderLayer l_{};
    int64_t E_ = 0, F_ = 0;
};

class CrossDecoderLayer {
public:
    CrossDecoderLayer(const py::object& qkv, const py::object& self_out, const py::object& q,
                      const py::object& cross_out, const py::object& ffn1, const py::object& ffn2,
                      const py::array& norm1_weight, const py::object& norm1_bias, float norm1_eps,
                      const py::array& norm2_weight, const py::object& norm2_bias, float norm2_eps,
                      const py::array& norm3_weight, const py::object& norm3_bias, float norm3_eps, int64_t num_heads,
                      const std::string& activation, bool norm_first, const py::object& self_scale,
                      const py::object& cross_scale)
        : refs_{qkv, self_out, q, cross_out, ffn1, ffn2} {
        layers::CrossDecoderLayer& l = l_;
        const char* names[6] = {"qkv", "self_out", "q", "cross_out", "ffn1", "ffn2"};
        layers::Projection* ps[6] = {&l.qkv, &l.self_out, &l.q, &l.cross_out, &l.ffn1, &l.ffn2};
        for (int i = 0; i < 6; ++i) ps[i]->w = &packed_matrix_of(refs_[i], names[i], &ps[i]->bias);
        E_ = l.self_out.w->N();
        F_ = l.ffn1.w->N();
        want_shape(*l.qkv.w, E_, 3 * E_, "qkv");
        want_shape(*l.self_out.w, E_, E_, "self_out");
        want_shape(*l.q.w, E_, E_, "q");
        want_shape(*l.cross_out.w, E_, E_, "cross_out");
        want_shape(*l.ffn1.w, E_, F_, "ffn1");
        want_shape(*l.ffn2.w, F_, E_, "ffn2");
        if (num_heads < 1 || E_ % num_heads)
            value_error("num_heads (" + std::to_string(num_heads) + ") must divide d_model (" + std::to_string(E_) +
                        ")");
        l.heads = num_heads;
        const float d = 1.0f / std::sqrt(static_cast<float>(E_ / num_heads));
        l.self_scale = self_scale.is_none() ? d : self_scale.cast<float>();
        l.cross_scale = cross_scale.is_none() ? d : cross_scale.cast<float>();
        if (!std::isfinite(l.self_scale) || !std::isfinite(l.cross_scale)) value_error("scales must be finite");
        l.act = parse_activation(activation);
        l.norm_first = norm_first;
        l.norm1 = layer_norm_of(norm1_weight, norm1_bias, norm1_eps, E_, "norm1", norm_[0], norm_[1]);
        l.norm2 = layer_norm_of(norm2_weight, norm2_bias, norm2_eps, E_, "norm2", norm_[2], norm_[3]);
        l.norm3 = layer_norm_of(norm3_weight, norm3_bias, norm3_eps, E_, "norm3", norm_[4], norm_[5]);
    }

    py::array step(const py::array& x, py::array cache_k, py::array cache_v, int64_t past, const py::array& memory_k,
                   const py::array& memory_v, int64_t memory_length, const py::object& key_padding_mask,
                   const py::object& memory_key_padding_mask, bool is_causal) const {
        require_f32(x, "x");
        require_ndim(x, 3, "x", "(batch, steps, d_model)");
        require_nonempty(x, "x");
        require_c_contiguous(x, "x");
        const int64_t B = x.shape(0), L = x.shape(1), E = E_, H = l_.heads, D = E / H;
        if (x.shape(2) != E)
            value_error("expected x of shape (batch, steps, " + std::to_string(E) + "), got " + shape_str(x));
        for (const py::array* c : {&cache_k, &cache_v}) {
            const char* name = c == &cache_k ? "cache_k" : "cache_v";
            require_f32(*c, name);
            require_ndim(*c, 3, name, "(batch, capacity, d_model)");
            require_c_contiguous(*c, name);
            if (!c->writeable()) value_error(std::string(name) + " is read-only");
            if (c->shape(0) != B || c->shape(2) != E)
                value_error(std::string("expected ") + name + " of shape (" + std::to_string(B) + ", capacity, " +
                            std::to_string(E) + "), got " + shape_str(*c));
            require_no_overlap(*c, x, name, "x");
        }
        const int64_t capacity = cache_k.shape(1);
        if (cache_v.shape(1) != capacity) value_error("cache_k and cache_v must have one shape");
        require_no_overlap(cache_v, cache_k, "cache_v", "cache_k");
        if (past < 0 || past + L > capacity)
            value_error("past (" + std::to_string(past) + ") + " + std::to_string(L) + " new positions exceed the " +
                        "cache's capacity " + std::to_string(capacity));
        const bool f16 = memory_k.dtype().is(py::dtype("float16"));
        for (const py::array* mkv : {&memory_k, &memory_v}) {
            const char* name = mkv == &memory_k ? "memory_k" : "memory_v";
            if (f16 ? !mkv->dtype().is(py::dtype("float16")) : !mkv->dtype().is(py::dtype::of<float>()))
                type_error(std::string("expected ") + name + " to be float32 or float16 like memory_k, got " +
                           dtype_str(*mkv));
            require_ndim(*mkv, 4, name, "(rows, heads, capacity, head_dim)");
            require_c_contiguous(*mkv, name);
            if (mkv->shape(1) != H || mkv->shape(3) != D || shape_of(*mkv) != shape_of(memory_k))
                value_error(std::string("expected ") + name + " of shape (rows, " + std::to_string(H) + ", capacity, " +
                            std::to_string(D) + ") like memory_k, got " + shape_str(*mkv));
        }
        const int64_t rows = memory_k.shape(0);
        if (rows < 1 || B % rows)
            value_error("the memory's " + std::to_string(rows) + " rows must divide the batch of " + std::to_string(B));
        if (memory_length < 1 || memory_length > memory_k.shape(2))
            value_error("memory_length must be in [1, " + std::to_string(memory_k.shape(2)) + "], got " +
                        std::to_string(memory_length));
        py::array kp, mkp;
        const uint8_t* self_pad = bool_mask(key_padding_mask, {B, past + L}, "key_padding_mask", kp);
        const uint8_t* memory_pad =
            bool_mask(memory_key_padding_mask, {rows, memory_length}, "memory_key_padding_mask", mkp);
        py::array y = empty_f32({B, L, E});
        LayerScratch s(B * L, E, F_);
        const layers::SelfCache c{f32_mut(cache_k), f32_mut(cache_v), capacity, past, self_pad, is_causal};
        const layers::MemoryKV m{memory_k.data(), memory_v.data(), rows, memory_k.shape(2), memory_length, f16,
                                 memory_pad};
        const float* xp = f32(x);
        float* yp = f32_mut(y);
        {
            py::gil_scoped_release nogil;
            layers::cross_decoder_layer(l_, B, L, xp, yp, c, m, s.views);
        }
        return y;
    }

private:
    py::object refs_[6];  // the PackedLinear objects whose matrices l_ points into
    std::vector<float> norm_[6];
    layers::CrossDecoderLayer l_{};
    int64_t E_ = 0, F_ = 0;
};

class DecoderLayer {
public:
    DecoderLayer(const py::object& qkv, const py::object& out, const py::object& gate_up, const py::object& down,
                 const py::array& attn_norm, const py::array& ffn_norm, float eps, int64_t num_heads,
                 int64_t num_kv_heads, int64_t rotary_dim, bool interleaved, const py::object& q_norm,
                 const py::object& k_norm, const py::object& post_attn_norm, const py::object& post_ffn_norm,
                 const py::object& scale, int64_t window, const std::string& activation, int rope_table, float softcap)
        : refs_{py::isinstance<py::list>(qkv) || py::isinstance<py::tuple>(qkv) ? py::object(py::tuple(qkv)) : qkv, out,
                gate_up, down} {
        layers::DecoderLayer& l = l_;
        if (py::isinstance<py::tuple>(refs_[0])) {  // Q, K and V apart
            const py::tuple parts = refs_[0].cast<py::tuple>();
            if (parts.size() != 3)
                value_error("expected qkv as one PackedLinear or three (Q, K, V), got " + std::to_string(parts.size()));
            l.qkv_parts = 3;
            for (int p = 0; p < 3; ++p) l.qkv[p].w = &packed_matrix_of(parts[p], "qkv", &l.qkv[p].bias);
        } else {
            l.qkv[0].w = &packed_matrix_of(qkv, "qkv", &l.qkv[0].bias);
        }
        l.out.w = &packed_matrix_of(out, "out", &l.out.bias);
        l.gate_up.w = &packed_matrix_of(gate_up, "gate_up", &l.gate_up.bias);
        l.down.w = &packed_matrix_of(down, "down", &l.down.bias);
        const int64_t E = l.out.w->N(), F = l.down.w->K();
        if (num_heads < 1 || num_kv_heads < 1 || num_heads % num_kv_heads || l.out.w->K() % num_heads)
            value_error("num_kv_heads (" + std::to_string(num_kv_heads) + ") must divide num_heads (" +
                        std::to_string(num_heads) + "), which must divide out's in_features (" +
                        std::to_string(l.out.w->K()) + ")");
        const int64_t D = l.out.w->K() / num_heads;
        if (l.qkv_parts == 1) {
            want_shape(*l.qkv[0].w, E, (num_heads + 2 * num_kv_heads) * D, "qkv");
        } else {
            want_shape(*l.qkv[0].w, E, num_heads * D, "q");
            want_shape(*l.qkv[1].w, E, num_kv_heads * D, "k");
            want_shape(*l.qkv[2].w, E, num_kv_heads * D, "v");
        }
        want_shape(*l.gate_up.w, E, 2 * F, "gate_up");
        want_shape(*l.down.w, F, E, "down");
        if (rotary_dim < 0 || rotary_dim > D || rotary_dim % 2)
            value_error("rotary_dim must be even and at most the head size " + std::to_string(D) + ", got " +
                        std::to_string(rotary_dim));
        if (!(eps >= 0.0f) || !std::isfinite(eps)) value_error("eps must be finite and >= 0");
        norms_[0] = vector_of(attn_norm, E, "attn_norm");
        norms_[1] = vector_of(ffn_norm, E, "ffn_norm");
        l.attn_norm = norms_[0].data();
        l.ffn_norm = norms_[1].data();
        // the optional vectors: the per-head norms (D floats), the post-norms (E floats)
        const py::object* optional[4] = {&q_norm, &k_norm, &post_attn_norm, &post_ffn_norm};
        const char* names[4] = {"q_norm", "k_norm", "post_attn_norm", "post_ffn_norm"};
        const float** slots[4] = {&l.q_norm, &l.k_norm, &l.post_attn_norm, &l.post_ffn_norm};
        for (int i = 0; i < 4; ++i) {
            if (optional[i]->is_none()) continue;
            norms_[2 + i] = vector_of(optional[i]->cast<py::array>(), i < 2 ? D : E, names[i]);
            *slots[i] = norms_[2 + i].data();
        }
        if (window < 0) value_error("window must be >= 0 (0: none), got " + std::to_string(window));
        if (rope_table < 0) value_error("rope_table must be >= 0, got " + std::to_string(rope_table));
        if (!(softcap >= 0.0f) || !std::isfinite(softcap)) value_error("softcap must be finite and >= 0 (0: none)");
        l.window = window;
        l.softcap = softcap;
        l.act = parse_activation(activation);
        l.rope = rope_table;
        l.eps = eps;
        l.heads = num_heads;
        l.kv_heads = num_kv_heads;
        l.head_dim = D;
        l.rot = rotary_dim;
        l.interleaved = interleaved;
        l.scale = 1.0f / std::sqrt(static_cast<float>(D));
        if (!scale.is_none()) {
            l.scale = scale.cast<float>();
            if (!(l.scale > 0.0f) || !std::isfinite(l.scale)) value_error("scale must be a finite number > 0");
        }
    }

    const layers::DecoderLayer& layer() const { return l_; }
    int64_t d_model() const { return l_.out.w->N(); }
    int64_t kv_dim() const { return l_.kv_heads * l_.head_dim; }
    int64_t qkv_width() const { return (l_.heads + 2 * l_.kv_heads) * l_.head_dim; }

private:
    py::object refs_[4];           // the PackedLinear objects whose matrices l_ points into
    std::vector<float> norms_[6];  // attn_norm, ffn_norm, q_norm, k_norm, post_attn_norm, post_ffn_norm
    layers::DecoderLayer l_{};
};

// Runs every layer over x in place (the residual stream, before the last layer's FFN output is added) and returns
// that last output; see cpp/layers/decoder_layer.h.
py::array decoder_stack(const std::vector<const DecoderLayer*>& stack, py::array x, const py::array& positions,
                        const py::object& cos_obj, const py::object& sin_obj, const std::vector<py::object>& k_objs,
                        const std::vector<py::object>& v_objs, int64_t past, const py::object& key_padding_mask) {
    // the caches are written in place: numpy arrays themselves, never a converted copy
    auto arrays = [](const std::vector<py::object>& objs) {
        std::vector<py::array> out;
        for (const py::object& o : objs) {
            if (!py::isinstance<py::array>(o)) type_error("expected the caches to be numpy arrays");
            out.push_back(o.cast<py::array>());
        }
        return out;
    };
    std::vector<py::array> cache_k = arrays(k_objs), cache_v = arrays(v_objs);
    if (stack.empty()) value_error("expected at least one layer");
    const layers::DecoderLayer& l0 = stack[0]->layer();
    const int64_t E = stack[0]->d_model();
    for (const DecoderLayer* d : stack) {
        if (!d) type_error("expected DecoderLayer objects, got None");
        const layers::DecoderLayer& l = d->layer();
        if (d->d_model() != E || l.heads != l0.heads || l.kv_heads != l0.kv_heads || l.rot != l0.rot)
            value_error("the layers of a stack must share d_model, heads, KV heads and rotary_dim");
    }
    require_f32(x, "x");
    require_ndim(x, 3, "x", "(batch, seq, d_model)");
    require_nonempty(x, "x");
    require_c_contiguous(x, "x");
    require_aligned(x, "x");
    if (!x.writeable()) value_error("x must be writeable (it is updated in place)");
    const int64_t B = x.shape(0), L = x.shape(1), M = B * L;
    if (x.shape(2) != E)
        value_error("expected x of shape (batch, seq, " + std::to_string(E) + "), got " + shape_str(x));
    if (!positions.dtype().is(py::dtype::of<int64_t>()) || positions.ndim() != 2 || positions.shape(0) != B ||
        positions.shape(1) != L)
        value_error("expected int64 positions of shape (" + std::to_string(B) + ", " + std::to_string(L) + "), got " +
                    shape_str(positions) + " " + dtype_str(positions));
    require_c_contiguous(positions, "positions");
    // one pair of rotary tables, or a list of them that the layers pick from (DecoderLayer's rope_table)
    auto tables = [](const py::object& o) {
        std::vector<py::array> out;
        if (py::isinstance<py::list>(o) || py::isinstance<py::tuple>(o)) {
            for (const py::handle h : o) out.push_back(h.cast<py::array>());
        } else {
            out.push_back(o.cast<py::array>());
        }
        return out;
    };
    const std::vector<py::array> cos = tables(cos_obj), sin = tables(sin_obj);
    if (cos.empty() || cos.size() != sin.size())
        value_error("expected as many sin tables as cos tables, at least one; got " + std::to_string(cos.size()) +
                    " and " + std::to_string(sin.size()));
    const int64_t half = l0.rot / 2;
    int64_t n_pos = cos[0].shape(0);
    std::vector<layers::RopeTables> ropes;
    for (std::size_t i = 0; i < cos.size(); ++i) {
        for (const py::array* t : {&cos[i], &sin[i]}) {
            require_f32(*t, "cos/sin");
            require_c_contiguous(*t, "cos/sin");
            if (t->ndim() != 2 || t->shape(1) != half || t->shape(0) != cos[i].shape(0))
                value_error("expected cos and sin tables of shape (positions, " + std::to_string(half) + "), got " +
                            shape_str(*t));
        }
        n_pos = std::min(n_pos, cos[i].shape(0));
        ropes.push_back(layers::RopeTables{f32(cos[i]), f32(sin[i])});
    }
    for (const DecoderLayer* d : stack)
        if (d->layer().rope >= static_cast<int>(ropes.size()))
            value_error("a layer reads rotary table " + std::to_string(d->layer().rope) + " of " +
                        std::to_string(ropes.size()));
    const auto* pos = static_cast<const int64_t*>(positions.data());
    for (int64_t i = 0; i < M; ++i)
        if (pos[i] < 0 || pos[i] >= n_pos)
            value_error("position " + std::to_string(pos[i]) + " is outside the rotary table of " +
                        std::to_string(n_pos) + " positions");
    if (past < 0) value_error("past must be >= 0");
    const std::size_t n = stack.size();
    if (cache_k.size() != n || cache_v.size() != n)
        value_error("expected one K and one V cache per layer (" + std::to_string(n) + "), got " +
                    std::to_string(cache_k.size()) + " and " + std::to_string(cache_v.size()));
    std::vector<layers::LayerCache> caches(n);
    const bool f16 = cache_k[0].dtype().is(py::dtype("float16"));
    for (std::size_t i = 0; i < n; ++i) {
        const py::array* kv[2] = {&cache_k[i], &cache_v[i]};
        for (const py::array* c : kv) {
            if (!c->dtype().is(py::dtype(f16 ? "float16" : "float32")))
                type_error("expected every K and V cache to be float32, or every one float16; got " +
                           dtype_str(cache_k[0]) + " and " + dtype_str(*c));
            require_c_contiguous(*c, "cache");
            if (!c->writeable()) value_error("caches must be writeable");
            if (c->ndim() != 4 || c->shape(0) != B || c->shape(1) != l0.kv_heads || c->shape(3) != l0.head_dim ||
                c->shape(2) < past + L || c->shape(2) != kv[0]->shape(2))
                value_error("expected K and V caches of shape (" + std::to_string(B) + ", " +
                            std::to_string(l0.kv_heads) + ", >= " + std::to_string(past + L) + ", " +
                            std::to_string(l0.head_dim) + "), got " + shape_str(*c));
            require_no_overlap(*c, x, "cache", "x");
        }
        caches[i] = layers::LayerCache{cache_k[i].mutable_data(), cache_v[i].mutable_data(), cache_k[i].shape(2), f16};
    }
    const uint8_t* kp = nullptr;
    py::array keep;
    if (!key_padding_mask.is_none()) {
        keep = key_padding_mask.cast<py::array>();
        if (!keep.dtype().is(py::dtype::of<bool>()))
            type_error("expected key_padding_mask to be bool (True = padding), got " + dtype_str(keep));
        if (keep.ndim() != 2 || keep.shape(0) != B || keep.shape(1) != past + L)
            value_error("expected key_padding_mask of shape (" + std::to_string(B) + ", " + std::to_string(past + L) +
                        "), got " + shape_str(keep));
        require_c_contiguous(keep, "key_padding_mask");
        kp = static_cast<const uint8_t*>(keep.data());
    }
    int64_t W = 0, Eq = 0, F = 0;
    bool post = false;
    for (const DecoderLayer* d : stack) {
        W = std::max(W, d->qkv_width());
        Eq = std::max(Eq, d->layer().out.w->K());
        F = std::max(F, d->layer().down.w->K());
        post = post || d->layer().post_attn_norm || d->layer().post_ffn_norm;
    }
    py::array pending = empty_f32({B, L, E});
    py::array sn = empty_f32({M, E}), sqkv = empty_f32({M, W}), sctx = empty_f32({M, Eq}), sgu = empty_f32({M, 2 * F});
    py::array sff = empty_f32({M, F}), so = empty_f32({post ? M : 1, E});
    const layers::DecoderScratch s{f32_mut(sn),  f32_mut(sqkv), f32_mut(sctx),
                                   f32_mut(sgu), f32_mut(sff),  post ? f32_mut(so) : nullptr};
    float* xp = f32_mut(x);
    float* pp = f32_mut(pending);
    std::vector<const layers::DecoderLayer*> ptrs;
    for (const DecoderLayer* d : stack) ptrs.push_back(&d->layer());
    {
        py::gil_scoped_release nogil;
        layers::decoder_stack(ptrs.data(), static_cast<int64_t>(n), B, L, xp, pp, pos, ropes.data(), caches.data(),
                              past, kp, s);
    }
    return pending;
}

}  // namespace

void bind_layers(py::module_& m) {
    py::class_<DecoderLayer>(m, "DecoderLayer",
                             "A Llama-family decoder layer (cpp/layers/decoder_layer.h): pre-RMSNorm, RoPE, grouped-\n"
                             "query attention over a KV cache, SwiGLU. qkv (E -> (H + 2 Hkv) D), out (H D -> E),\n"
                             "gate_up (E -> 2F: gate rows, then up rows) and down (F -> E) are PackedLinear objects\n"
                             "(qkv may be three: Q, K and V apart, each of its own weight type);\n"
                             "q_norm / k_norm (D,): an RMSNorm of each query / key head before RoPE (Qwen3, Gemma 3),\n"
                             "or None; post_attn_norm / post_ffn_norm (E,): RMSNorms of the attention's and the FFN's\n"
                             "outputs before the residual add (Gemma), or None; scale: of the attention's scores\n"
                             "(None: 1 / sqrt(D)); window: a sliding window of keys (0: none); activation: of the\n"
                             "FFN's gate ('silu': SwiGLU, 'gelu_tanh': GeGLU); rope_table: which of decoder_stack's\n"
                             "rotary tables the layer reads; softcap: the scores soft-capped by tanh (Gemma 2), 0:\n"
                             "not.")
        .def(py::init<const py::object&, const py::object&, const py::object&, const py::object&, const py::array&,
                      const py::array&, float, int64_t, int64_t, int64_t, bool, const py::object&, const py::object&,
                      const py::object&, const py::object&, const py::object&, int64_t, const std::string&, int,
                      float>(),
             py::arg("qkv"), py::arg("out"), py::arg("gate_up"), py::arg("down"), py::arg("attn_norm"),
             py::arg("ffn_norm"), py::arg("eps"), py::arg("num_heads"), py::arg("num_kv_heads"), py::arg("rotary_dim"),
             py::arg("interleaved"), py::arg("q_norm") = py::none(), py::arg("k_norm") = py::none(),
             py::arg("post_attn_norm") = py::none(), py::arg("post_ffn_norm") = py::none(),
             py::arg("scale") = py::none(), py::arg("window") = 0, py::arg("activation") = "silu",
             py::arg("rope_table") = 0, py::arg("softcap") = 0.0f);
    m.def("decoder_stack", &decoder_stack, py::arg("layers"), py::arg("x"), py::arg("positions"), py::arg("cos"),
          py::arg("sin"), py::arg("cache_k"), py::arg("cache_v"), py::arg("past"),
          py::arg("key_padding_mask") = py::none(),
          "Runs the DecoderLayer list over x (B, L, E) in place (the residual stream) and returns the last layer's\n"
          "FFN output (B, L, E), which the caller adds before the final norm. positions (B, L) int64 index the\n"
          "rotary tables cos / sin (n_pos, rotary_dim / 2), or lists of such tables that the layers pick from\n"
          "(rope_table); cache_k / cache_v: per layer (B, Hkv, capacity, D),\n"
          "all float32 or all float16 (written rounded to nearest; attention widens them as it reads),\n"
          "positions [past, past + L) are written; key_padding_mask (B, past + L) bool, True = padding.");
    py::class_<CrossDecoderLayer>(m, "CrossDecoderLayer",
                                  "One decoding step of a transformer decoder layer with encoder-decoder attention in\n"
                                  "one call (cpp/layers/cross_decoder_layer.h): the PackedLinear projections qkv\n"
                                  "(E -> 3E), self_out, q, cross_out (E -> E), ffn1 (E -> F, activation fused), ffn2,\n"
                                  "three LayerNorms, post-LN (norm_first=False) or pre-LN; scales of the two\n"
                                  "attentions' scores (None: 1 / sqrt(head_dim)).")
        .def(py::init<const py::object&, const py::object&, const py::object&, const py::object&, const py::object&,
                      const py::object&, const py::array&, const py::object&, float, const py::array&,
                      const py::object&, float, const py::array&, const py::object&, float, int64_t, const std::string&,
                      bool, const py::object&, const py::object&>(),
             py::arg("qkv"), py::arg("self_out"), py::arg("q"), py::arg("cross_out"), py::arg("ffn1"), py::arg("ffn2"),
             py::arg("norm1_weight"), py::arg("norm1_bias"), py::arg("norm1_eps"), py::arg("norm2_weight"),
             py::arg("norm2_bias"), py::arg("norm2_eps"), py::arg("norm3_weight"), py::arg("norm3_bias"),
             py::arg("norm3_eps"), py::arg("num_heads"), py::arg("activation"), py::arg("norm_first"),
             py::arg("self_scale") = py::none(), py::arg("cross_scale") = py::none())
        .def("step", &CrossDecoderLayer::step, py::arg("x"), py::arg("cache_k"), py::arg("cache_v"), py::arg("past"),
             py::arg("memory_k"), py::arg("memory_v"), py::arg("memory_length"),
             py::arg("key_padding_mask") = py::none(), py::arg("memory_key_padding_mask") = py::none(),
             py::arg("is_causal") = true,
             "x (B, L, E) float32 C-contiguous: the step's rows. cache_k / cache_v (B, capacity, E) float32: the\n"
             "self-attention's keys and values, positions [past, past + L) written. memory_k / memory_v (rows, H,\n"
             "capacity, D), float32 or float16: the encoder output's, the first memory_length positions read; rows\n"
             "divides B (decoder rows g r .. g r + g - 1 read memory row r). key_padding_mask (B, past + L) and\n"
             "memory_key_padding_mask (rows, memory_length): bool, True = padding. Returns (B, L, E).");
    py::class_<EncoderLayer>(m, "EncoderLayer",
                             "A whole transformer encoder layer in one call (cpp/layers/encoder_layer.h): the\n"
                             "PackedLinear projections qkv (E -> 3E), out, ffn1 (E -> F, activation fused), ffn2, two\n"
                             "LayerNorms, post-LN (norm_first=False) or pre-LN.")
        .def(py::init<const py::object&, const py::object&, const py::object&, const py::object&, const py::array&,
                      const py::object&, float, const py::array&, const py::object&, float, int64_t, const std::string&,
                      bool, const py::object&>(),
             py::arg("qkv"), py::arg("out"), py::arg("ffn1"), py::arg("ffn2"), py::arg("norm1_weight"),
             py::arg("norm1_bias"), py::arg("norm1_eps"), py::arg("norm2_weight"), py::arg("norm2_bias"),
             py::arg("norm2_eps"), py::arg("num_heads"), py::arg("activation"), py::arg("norm_first"),
             py::arg("scale") = py::none())
        .def("__call__", &EncoderLayer::call, py::arg("x"), py::arg("key_padding_mask") = py::none(),
             "x (B, L, E) float32 C-contiguous; key_padding_mask (B, L) bool, True = padding. Returns (B, L, E).")
        .def("packed", &EncoderLayer::packed, py::arg("x"), py::arg("offsets"),
             "x (T, E) float32 C-contiguous: sequences packed without padding, sequence b the rows\n"
             "[offsets[b], offsets[b + 1]) (offsets int64, from 0 to T, non-decreasing); each attends to itself.\n"
             "Returns (T, E).");
}

}  // namespace pyattn::bind

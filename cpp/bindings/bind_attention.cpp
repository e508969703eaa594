#include <cmath>

#include "bindings/bind_common.h"
#include "ops/attention.h"

namespace pyattn::bind {
namespace {

void check_head_tensor(const py::array& t, const char* name, const char* what, bool f16 = false) {
    if (f16) {
        if (!t.dtype().is(py::dtype("float16")))
            type_error(std::string("expected ") + name + " to be float16 like k, got " + dtype_str(t));
    } else {
        require_f32(t, name);
    }
    require_ndim(t, 4, name, what);
    require_nonempty(t, name);
    require_last_axis_contiguous(t, name);
}

ops::HeadTensor head_tensor(const py::array& t, bool f16 = false) {
    return ops::HeadTensor{t.data(), estride(t, 0), estride(t, 1), estride(t, 2), f16};
}

std::string dims(std::initializer_list<int64_t> d) {
    std::string s = "(";
    int i = 0;
    for (int64_t v : d) s += (i++ ? ", " : "") + std::to_string(v);
    return s + ")";
}

// A mask given as bool or float32 with `want` dims, each equal to the target or 1 (broadcast).
ops::MaskRef check_mask(const py::object& obj, const std::vector<int64_t>& want, const char* name,
                        const std::string& want_str, py::array& keep) {
    ops::MaskRef m;
    if (obj.is_none()) return m;
    if (!py::isinstance<py::array>(obj)) type_error(std::string("expected ") + name + " to be a numpy array or None");
    keep = obj.cast<py::array>();
    const bool is_bool = keep.dtype().is(py::dtype::of<bool>());
    if (!is_bool && !keep.dtype().is(py::dtype::of<float>()))
        type_error(std::string("expected ") + name + " to be bool (True = masked out) or float32 (added to the " +
                   "scores), got " + dtype_str(keep));
    bool ok = keep.ndim() == static_cast<py::ssize_t>(want.size());
    for (std::size_t i = 0; ok && i < want.size(); ++i) ok = keep.shape(i) == want[i] || keep.shape(i) == 1;
    if (!ok) value_error(std::string("expected ") + name + " of shape " + want_str + ", got " + shape_str(keep));
    if (keep.shape(keep.ndim() - 1) != want.back())
        value_error(std::string(name) + " must cover every key: expected last dimension " +
                    std::to_string(want.back()) + ", got " + shape_str(keep));
    require_last_axis_contiguous(keep, name);
    m.data = keep.data();
    m.is_bool = is_bool;
    auto st = [&](int i) { return keep.shape(i) == 1 ? 0 : estride(keep, i); };
    if (want.size() == 4) {
        m.sb = st(0);
        m.sh = st(1);
        m.sq = st(2);
    } else {  // key padding (B, Lk)
        m.sb = st(0);
    }
    return m;
}

py::object sdpa(const py::array& q, const py::array& k, const py::array& v, const py::object& attn_mask,
                const py::object& key_padding_mask, bool is_causal, int64_t causal_offset, const py::object& scale,
                bool return_weights, const py::object& out, const std::string& precision) {
    check_head_tensor(q, "q", "(B, H, Lq, D)");
    const bool f16 = k.dtype().is(py::dtype("float16"));  // a float16 KV cache: k and v both
    check_head_tensor(k, "k", "(B, Hkv, Lk, D)", f16);
    check_head_tensor(v, "v", "(B, Hkv, Lk, Dv)", f16);
    if (f16 && return_weights) value_error("return_weights needs float32 k and v");
    if (precision != "float32" && precision != "bfloat16")
        value_error("precision must be 'float32' or 'bfloat16', got '" + precision + "'");
    const int64_t B = q.shape(0), H = q.shape(1), Lq = q.shape(2), D = q.shape(3);
    const int64_t Lk = k.shape(2), Dv = v.shape(3);
    // K/V may have fewer heads than Q (grouped-query attention): Hkv must divide H
    const int64_t Hkv = k.shape(1);
    if (k.shape(0) != B || k.shape(3) != D || Hkv < 1 || H % Hkv)
        value_error("expected k of shape (" + std::to_string(B) + ", Hkv, Lk, " + std::to_string(D) +
                    ") with Hkv dividing the " + std::to_string(H) + " heads of q " + shape_str(q) + ", got " +
                    shape_str(k));
    if (v.shape(0) != B || v.shape(1) != Hkv || v.shape(2) != Lk)
        value_error("expected v of shape (" + std::to_string(B) + ", " + std::to_string(Hkv) + ", " +
                    std::to_string(Lk) + ", Dv) to match q " + shape_str(q) + " and k " + shape_str(k) + ", got " +
                    shape_str(v));
    float sc;
    if (scale.is_none()) {
        sc = 1.0f / std::sqrt(static_cast<float>(D));
    } else {
        sc = scale.cast<float>();
        if (!std::isfinite(sc)) value_error("scale must be finite, got " + std::to_string(sc));
    }
    py::array km, kp;
    ops::AttentionArgs a;
    a.attn_mask = check_mask(attn_mask, {B, H, Lq, Lk}, "attn_mask", dims({B, H, Lq, Lk}) + " (1s broadcast)", km);
    a.key_padding_mask = check_mask(key_padding_mask, {B, Lk}, "key_padding_mask", dims({B, Lk}), kp);
    py::array o;
    if (out.is_none()) {
        o = empty_f32({B, H, Lq, Dv});
    } else {
        if (!py::isinstance<py::array>(out)) type_error("expected out to be a numpy array or None");
        o = out.cast<py::array>();
        require_f32(o, "out");
        if (o.ndim() != 4 || o.shape(0) != B || o.shape(1) != H || o.shape(2) != Lq || o.shape(3) != Dv)
            value_error("expected out of shape " + dims({B, H, Lq, Dv}) + ", got " + shape_str(o));
        require_last_axis_contiguous(o, "out");
        if (!o.writeable()) value_error("out is read-only");
        require_no_overlap(o, q, "out", "q");
        require_no_overlap(o, k, "out", "k");
        require_no_overlap(o, v, "out", "v");
        if (a.attn_mask.data) require_no_overlap(o, km, "out", "attn_mask");
        if (a.key_padding_mask.data) require_no_overlap(o, kp, "out", "key_padding_mask");
    }
    py::array w;
    if (return_weights) w = empty_f32({B, H, Lq, Lk});

    a.B = B;
    a.H = H;
    a.kv_group = H / Hkv;
    a.Lq = Lq;
    a.Lk = Lk;
    a.D = D;
    a.Dv = Dv;
    a.q = head_tensor(q);
    a.k = head_tensor(k, f16);
    a.v = head_tensor(v, f16);
    a.out = f32_mut(o);
    a.out_sb = estride(o, 0);
    a.out_sh = estride(o, 1);
    a.out_sl = estride(o, 2);
    a.causal = is_causal;
    a.causal_offset = causal_offset;
    a.scale = sc;
    a.weights = return_weights ? f32_mut(w) : nullptr;
    a.bf16 = precision == "bfloat16";
    {
        py::gil_scoped_release nogil;
        ops::scaled_dot_product_attention(a);
    }
    if (return_weights) return py::make_tuple(o, w);
    return o;
}

}  // namespace

void bind_attention(py::module_& m) {
    m.def("scaled_dot_product_attention", &sdpa, py::arg("q"), py::arg("k"), py::arg("v"),
          py::arg("attn_mask") = py::none(), py::arg("key_padding_mask") = py::none(), py::arg("is_causal") = false,
          py::arg("causal_offset") = 0, py::arg("scale") = py::none(), py::arg("return_weights") = false,
          py::arg("out") = py::none(), py::arg("precision") = "float32",
          "Fused softmax(scale q k^T + mask) v. q (B, H, Lq, D), k (B, Hkv, Lk, D), v (B, Hkv, Lk, Dv) with Hkv "
          "dividing\nH (grouped-query attention: query head h reads K/V head h / (H / Hkv)): float32 views\n"
          "(k and v may both be float16: a KV cache, widened as read)\n"
          "with a contiguous last axis (heads may be strided views). attn_mask (B|1, H|1, Lq|1, Lk) and\n"
          "key_padding_mask (B|1, Lk): bool (True = masked out) or float32 (added). is_causal: key j visible to\n"
          "query i iff j <= i + causal_offset. Returns out (B, H, Lq, Dv), and the weights (B, H, Lq, Lk) too when\n"
          "return_weights. A query with every key masked gets zeros. precision='bfloat16' allows q k^T and p v on\n"
          "bfloat16 roundings of q, k, the probabilities and v (float32 sums), where the CPU multiplies bfloat16\n"
          "pairs (AVX512_BF16) and more than 16 query rows take the blocked path; float32 elsewhere.");
}

}  // namespace pyattn::bind

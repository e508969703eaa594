#include "bindings/bind_common.h"
#include "ops/scores.h"

namespace pyattn::bind {
namespace {

void check_rows(const py::array& t, const char* name, const char* what) {
    require_f32(t, name);
    require_ndim(t, 3, name, what);
    require_nonempty(t, name);
    require_last_axis_contiguous(t, name);
}

py::array additive_scores(const py::array& qp, const py::array& kp, const py::array& v, float v_bias) {
    check_rows(qp, "qp", "(B, Lq, H)");
    check_rows(kp, "kp", "(B, Lk, H)");
    require_f32(v, "v");
    const int64_t B = qp.shape(0), Lq = qp.shape(1), H = qp.shape(2), Lk = kp.shape(1);
    if (kp.shape(0) != B || kp.shape(2) != H)
        value_error("expected kp of shape (" + std::to_string(B) + ", Lk, " + std::to_string(H) + ") to match qp " +
                    shape_str(qp) + ", got " + shape_str(kp));
    if (v.ndim() != 1 || v.shape(0) != H)
        value_error("expected v of shape (" + std::to_string(H) + ",) (the hidden size of qp " + shape_str(qp) +
                    "), got " + shape_str(v));
    require_last_axis_contiguous(v, "v");
    py::array s = empty_f32({B, Lq, Lk});
    ops::AdditiveScoresArgs a;
    a.B = B;
    a.Lq = Lq;
    a.Lk = Lk;
    a.H = H;
    a.qp = ops::RowsView{f32(qp), estride(qp, 0), estride(qp, 1)};
    a.kp = ops::RowsView{f32(kp), estride(kp, 0), estride(kp, 1)};
    a.v = f32(v);
    a.v_bias = v_bias;
    a.scores = f32_mut(s);
    {
        py::gil_scoped_release nogil;
        ops::additive_scores(a);
    }
    return s;
}

}  // namespace

void bind_scores(py::module_& m) {
    m.def("additive_scores", &additive_scores, py::arg("qp"), py::arg("kp"), py::arg("v"), py::arg("v_bias") = 0.0f,
          "Additive (Bahdanau) attention scores, fused: scores[b, i, j] = sum_h v[h] tanh(qp[b, i, h] + kp[b, j, h])\n"
          "+ v_bias. qp (B, Lq, H) projected queries, kp (B, Lk, H) projected keys (float32 views with a\n"
          "contiguous last axis), v (H,). Returns (B, Lq, Lk) float32; a score meeting a NaN or infinite\n"
          "qp + kp or v is NaN.");
}

}  // namespace pyattn::bind

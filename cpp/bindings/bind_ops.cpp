#include "bindings/bind_common.h"
#include "cpu/cpu.h"
#include "ops/activations.h"
#include "ops/layer_norm.h"
#include "ops/rms_norm.h"
#include "ops/rope.h"
#include "ops/softmax.h"
#include "ops/topk.h"

namespace pyattn::bind {
namespace {

void check_rows_input(const py::array& x, const char* name) {
    require_f32(x, name);
    require_min_ndim(x, 1, name, "(..., n)");
    require_nonempty(x, name);
    require_c_contiguous(x, name);
}

py::array softmax(const py::array& x, bool log) {
    check_rows_input(x, "x");
    const int64_t n = x.shape(x.ndim() - 1), rows = static_cast<int64_t>(x.size()) / n;
    py::array y = empty_f32(shape_of(x));
    const float* xp = f32(x);
    float* yp = f32_mut(y);
    py::gil_scoped_release nogil;
    (log ? ops::log_softmax : ops::softmax)(xp, n, yp, n, rows, n);
    return y;
}

py::tuple topk(const py::array& x, int64_t k) {
    check_rows_input(x, "x");
    const int64_t n = x.shape(x.ndim() - 1), rows = static_cast<int64_t>(x.size()) / n;
    if (k < 0 || k > n) value_error("k must be in [0, " + std::to_string(n) + "], got " + std::to_string(k));
    std::vector<int64_t> shape = shape_of(x);
    shape.back() = k;
    py::array values = empty_f32(shape);
    py::array_t<int64_t> indices(shape);
    const float* xp = f32(x);
    float* vp = f32_mut(values);
    int64_t* ip = indices.mutable_data();
    {
        py::gil_scoped_release nogil;
        ops::topk(xp, n, rows, n, k, vp, ip);
    }
    return py::make_tuple(values, indices);
}

const float* optional_vector(const py::object& v, int64_t n, const char* name, py::array& keep) {
    if (v.is_none()) return nullptr;
    if (!py::isinstance<py::array>(v)) type_error(std::string("expected ") + name + " to be a numpy array or None");
    keep = v.cast<py::array>();
    require_f32(keep, name);
    if (keep.ndim() != 1 || keep.shape(0) != n)
        value_error(std::string("expected ") + name + " of shape (" + std::to_string(n) + ",), got " + shape_str(keep));
    require_c_contiguous(keep, name);
    return f32(keep);
}

py::array layer_norm(const py::array& x, const py::object& weight, const py::object& bias, float eps,
                     const py::object& residual) {
    check_rows_input(x, "x");
    if (!(eps >= 0.0f)) value_error("eps must be >= 0, got " + std::to_string(eps));
    const int64_t n = x.shape(x.ndim() - 1), rows = static_cast<int64_t>(x.size()) / n;
    py::array kw, kb;
    const float* w = optional_vector(weight, n, "weight", kw);
    const float* b = optional_vector(bias, n, "bias", kb);
    py::array kr;
    const float* r = nullptr;
    if (!residual.is_none()) {
        if (!py::isinstance<py::array>(residual)) type_error("expected residual to be a numpy array or None");
        kr = residual.cast<py::array>();
        require_f32(kr, "residual");
        if (shape_of(kr) != shape_of(x))
            value_error("expected residual of the shape of x " + shape_str(x) + ", got " + shape_str(kr));
        require_c_contiguous(kr, "residual");
        r = f32(kr);
    }
    py::array y = empty_f32(shape_of(x));
    const float* xp = f32(x);
    float* yp = f32_mut(y);
    py::gil_scoped_release nogil;
    ops::layer_norm(xp, n, yp, n, rows, n, w, b, eps, r, n);
    return y;
}

py::array rms_norm(const py::array& x, const py::object& weight, float eps, const py::object& residual) {
    check_rows_input(x, "x");
    if (!(eps >= 0.0f)) value_error("eps must be >= 0, got " + std::to_string(eps));
    const int64_t n = x.shape(x.ndim() - 1), rows = static_cast<int64_t>(x.size()) / n;
    py::array kw;
    const float* w = optional_vector(weight, n, "weight", kw);
    float* r = nullptr;
    py::array kr;
    if (!residual.is_none()) {
        if (!py::isinstance<py::array>(residual)) type_error("expected residual to be a numpy array or None");
        kr = residual.cast<py::array>();
        require_out(kr, shape_of(x), "residual");  // written in place: float32, C-contiguous, writable
        require_no_overlap(kr, x, "residual", "x");
        r = f32_mut(kr);
    }
    py::array y = empty_f32(shape_of(x));
    const float* xp = f32(x);
    float* yp = f32_mut(y);
    py::gil_scoped_release nogil;
    ops::rms_norm(xp, n, yp, n, rows, n, w, eps, r, n);
    return y;
}

void rope(const py::object& xo, const py::array& positions, const py::array& cos_table, const py::array& sin_table,
          bool interleaved) {
    // an object, not py::array: the caster would convert a list (or anything array-like) into a new array, and
    // the in-place rotation would be lost
    if (!py::isinstance<py::array>(xo)) type_error("expected x to be a numpy array (rotated in place)");
    py::array x = xo.cast<py::array>();
    require_f32(x, "x");
    require_ndim(x, 4, "x", "(B, L, H, D)");
    require_nonempty(x, "x");
    require_last_axis_contiguous(x, "x");
    if (!x.writeable()) value_error("x is read-only: the rotation is applied in place");
    const int64_t B = x.shape(0), L = x.shape(1), H = x.shape(2), D = x.shape(3);
    require_f32(cos_table, "cos");
    require_f32(sin_table, "sin");
    require_ndim(cos_table, 2, "cos", "(positions, rot / 2)");
    require_c_contiguous(cos_table, "cos");
    require_c_contiguous(sin_table, "sin");
    if (shape_of(sin_table) != shape_of(cos_table))
        value_error("expected sin of the shape of cos " + shape_str(cos_table) + ", got " + shape_str(sin_table));
    const int64_t n_pos = cos_table.shape(0), half = cos_table.shape(1);
    if (half < 1 || 2 * half > D)
        value_error("cos / sin rotate " + std::to_string(2 * half) + " dims, heads have " + std::to_string(D));
    if (!positions.dtype().is(py::dtype::of<int64_t>()))
        type_error("expected positions to be int64, got " + dtype_str(positions));
    if (positions.ndim() != 2 || positions.shape(0) != B || positions.shape(1) != L)
        value_error("expected positions of shape (" + std::to_string(B) + ", " + std::to_string(L) + "), got " +
                    shape_str(positions));
    require_c_contiguous(positions, "positions");
    const auto* pos = static_cast<const int64_t*>(positions.data());
    for (int64_t i = 0; i < B * L; ++i)
        if (pos[i] < 0 || pos[i] >= n_pos)
            value_error("position " + std::to_string(pos[i]) + " is outside the " + std::to_string(n_pos) +
                        " positions of the cos / sin tables");
    require_no_overlap(x, cos_table, "x", "cos");
    require_no_overlap(x, sin_table, "x", "sin");
    float* xp = f32_mut(x);
    const int64_t sb = estride(x, 0), sl = estride(x, 1), sh = estride(x, 2);
    py::gil_scoped_release nogil;
    ops::rope(xp, B, L, H, sb, sl, sh, pos, f32(cos_table), f32(sin_table), 2 * half, interleaved);
}

py::array swiglu(const py::array& gu, const std::string& activation) {
    const kernels::Activation act = parse_activation(activation);
    check_rows_input(gu, "gate_up");
    const int64_t n = gu.shape(gu.ndim() - 1), rows = static_cast<int64_t>(gu.size()) / n;
    if (n % 2) value_error("expected gate_up of shape (..., 2 F) ([gate | up]), got " + shape_str(gu));
    std::vector<int64_t> shape = shape_of(gu);
    shape.back() = n / 2;
    py::array y = empty_f32(shape);
    const float* gp = f32(gu);
    float* yp = f32_mut(y);
    py::gil_scoped_release nogil;
    ops::swiglu(gp, yp, rows, n / 2, act);
    return y;
}

py::array activation(const py::array& x, const std::string& kind, const py::object& bias) {
    const kernels::Activation act = parse_activation(kind);
    check_rows_input(x, "x");
    const int64_t n = x.shape(x.ndim() - 1);
    py::array kb;
    const float* b = optional_vector(bias, n, "bias", kb);
    py::array y = empty_f32(shape_of(x));
    const float* xp = f32(x);
    float* yp = f32_mut(y);
    const int64_t total = static_cast<int64_t>(x.size());
    py::gil_scoped_release nogil;
    ops::activation(xp, yp, total, act, b, n);
    return y;
}

// out = float16(src), rounded to nearest even (beyond 65504: inf), for arrays of one shape whose last axes are
// contiguous (the others may be strided: heads split out of a projection, the filled part of a cache).
void to_float16(const py::array& src, py::array out) {
    require_f32(src, "src");
    if (!out.dtype().is(py::dtype("float16"))) type_error("expected out to be float16, got " + dtype_str(out));
    if (shape_of(out) != shape_of(src))
        value_error("expected out of the shape of src " + shape_str(src) + ", got " + shape_str(out));
    if (!out.writeable()) value_error("out is read-only");
    if (src.size() == 0) return;
    require_last_axis_contiguous(src, "src");
    require_last_axis_contiguous(out, "out");
    require_no_overlap(out, src, "out", "src");
    const int nd = static_cast<int>(src.ndim());
    const int64_t n = nd ? src.shape(nd - 1) : 1, rows = static_cast<int64_t>(src.size()) / n;
    std::vector<int64_t> shape = shape_of(src), ss(nd), os(nd);
    for (int i = 0; i < nd; ++i) {
        ss[i] = estride(src, i);
        os[i] = out.strides(i) / 2;
    }
    const float* sp = f32(src);
    uint16_t* op = static_cast<uint16_t*>(out.mutable_data());
    const kernels::KernelSet& ks = cpu::active();
    py::gil_scoped_release nogil;
    for (int64_t r = 0; r < rows; ++r) {
        int64_t so = 0, oo = 0, rest = r;  // row r's offsets: its index over the axes before the last
        for (int i = nd - 2; i >= 0; --i) {
            const int64_t idx = rest % shape[i];
            rest /= shape[i];
            so += idx * ss[i];
            oo += idx * os[i];
        }
        ks.narrow_f16(sp + so, op + oo, n);
    }
}

}  // namespace

void bind_ops(py::module_& m) {
    m.def("to_float16", &to_float16, py::arg("src"), py::arg("out"),
          "out[...] = src rounded to float16 (nearest even; beyond 65504: inf): float32 src and float16 out of one\n"
          "shape, each with a contiguous last axis (other axes may be strided views).");
    m.def(
        "softmax", [](const py::array& x) { return softmax(x, false); }, py::arg("x"),
        "softmax over the last axis of a C-contiguous float32 array; an all -inf row gives zeros.");
    m.def(
        "log_softmax", [](const py::array& x) { return softmax(x, true); }, py::arg("x"),
        "log_softmax over the last axis of a C-contiguous float32 array; an all -inf row gives -inf.");
    m.def("topk", &topk, py::arg("x"), py::arg("k"),
          "(values, indices) of the k largest entries over the last axis of a C-contiguous float32 array, largest\n"
          "first; ties keep the lower index first, NaN ranks below every number.");
    m.def("swiglu", &swiglu, py::arg("gate_up"), py::arg("activation") = "silu",
          "act(gate) * up for gate_up (..., 2 F) = [gate | up] (the two projections of a gated FFN in one GEMM):\n"
          "activation 'silu' (SwiGLU, Llama), 'gelu_tanh' (GeGLU, Gemma), or another of activation()'s.");
    m.def("rope", &rope, py::arg("x"), py::arg("positions"), py::arg("cos"), py::arg("sin"),
          py::arg("interleaved") = false,
          "Rotary position embedding in place on x (B, L, H, D) (last axis contiguous; heads may be strided views):\n"
          "the first 2 * cos.shape[1] dims of each head rotate by the angles of positions (B, L) int64, rows of the\n"
          "cos / sin tables (n_positions, rot / 2). Pairs (i, i + rot/2) (rotate_half) or (2i, 2i+1) (interleaved).");
    m.def(
        "rms_norm", &rms_norm, py::arg("x"), py::arg("weight") = py::none(), py::arg("eps") = 1e-6f,
        py::arg("residual") = py::none(),
        "RMS normalisation over the last axis: x / sqrt(mean(x^2) + eps) * weight. With residual (float32, the shape\n"
        "of x, C-contiguous, writable): residual += x in place first, and the sum is normalised (pre-norm step).");
    m.def("layer_norm", &layer_norm, py::arg("x"), py::arg("weight") = py::none(), py::arg("bias") = py::none(),
          py::arg("eps") = 1e-5f, py::arg("residual") = py::none(),
          "Layer normalisation over the last axis (biased variance, as torch) of x, or of x + residual.");
    m.def("activation", &activation, py::arg("x"), py::arg("kind"), py::arg("bias") = py::none(),
          "Element-wise activation (relu, gelu, gelu_tanh, silu, none) of x (+ bias over the last axis).");
}

}  // namespace pyattn::bind

#include "bindings/bind_common.h"
#include "ops/activations.h"
#include "ops/layer_norm.h"
#include "ops/softmax.h"

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

py::array activation(const py::array& x, const std::string& kind, const py::object& bias) {
    kernels::Activation act;
    if (kind == "relu")
        act = kernels::Activation::relu;
    else if (kind == "gelu")
        act = kernels::Activation::gelu_erf;
    else if (kind == "gelu_tanh")
        act = kernels::Activation::gelu_tanh;
    else if (kind == "silu")
        act = kernels::Activation::silu;
    else if (kind == "none")
        act = kernels::Activation::none;
    else
        value_error("unknown activation '" + kind + "': expected one of relu, gelu, gelu_tanh, silu, none");
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

}  // namespace

void bind_ops(py::module_& m) {
    m.def(
        "softmax", [](const py::array& x) { return softmax(x, false); }, py::arg("x"),
        "softmax over the last axis of a C-contiguous float32 array; an all -inf row gives zeros.");
    m.def(
        "log_softmax", [](const py::array& x) { return softmax(x, true); }, py::arg("x"),
        "log_softmax over the last axis of a C-contiguous float32 array; an all -inf row gives -inf.");
    m.def("layer_norm", &layer_norm, py::arg("x"), py::arg("weight") = py::none(), py::arg("bias") = py::none(),
          py::arg("eps") = 1e-5f, py::arg("residual") = py::none(),
          "Layer normalisation over the last axis (biased variance, as torch) of x, or of x + residual.");
    m.def("activation", &activation, py::arg("x"), py::arg("kind"), py::arg("bias") = py::none(),
          "Element-wise activation (relu, gelu, gelu_tanh, silu, none) of x (+ bias over the last axis).");
}

}  // namespace pyattn::bind

#include <memory>

#include "bindings/bind_common.h"
#include "cpu/cpu.h"
#include "gemm/gemm.h"
#include "gemm/packed_matrix.h"
#include "ops/rnn.h"

namespace pyattn::bind {
namespace {

// A float32 C-contiguous (rows, cols) weight, or (n,) bias / None.
const float* weight_2d(const py::array& w, int64_t rows, int64_t cols, const char* name) {
    require_f32(w, name);
    require_ndim(w, 2, name, "(3 * hidden_size, in_features)");
    require_c_contiguous(w, name);
    if ((rows >= 0 && w.shape(0) != rows) || (cols >= 0 && w.shape(1) != cols))
        value_error(std::string("expected ") + name + " of shape (" + std::to_string(rows) + ", " +
                    std::to_string(cols) + "), got " + shape_str(w));
    require_nonempty(w, name);
    return f32(w);
}

std::vector<float> bias_vec(const py::object& b, int64_t n, const char* name) {
    if (b.is_none()) return {};
    if (!py::isinstance<py::array>(b)) type_error(std::string("expected ") + name + " to be a numpy array or None");
    py::array a = b.cast<py::array>();
    require_f32(a, name);
    if (a.ndim() != 1 || a.shape(0) != n)
        value_error(std::string("expected ") + name + " of shape (" + std::to_string(n) + ",), got " + shape_str(a));
    require_c_contiguous(a, name);
    return std::vector<float>(f32(a), f32(a) + n);
}

// One GRU layer (one direction) with both weight matrices packed once.
class GRULayer {
public:
    GRULayer(const py::array& w_ih, const py::array& w_hh, const py::object& b_ih, const py::object& b_hh) {
        if (w_hh.ndim() != 2 || w_hh.shape(0) != 3 * w_hh.shape(1))
            value_error("expected weight_hh of shape (3 * hidden_size, hidden_size), got " + shape_str(w_hh));
        H_ = w_hh.shape(1);
        const float* wh = weight_2d(w_hh, 3 * H_, H_, "weight_hh");
        const float* wi = weight_2d(w_ih, 3 * H_, -1, "weight_ih");
        I_ = w_ih.shape(1);
        b_ih_ = bias_vec(b_ih, 3 * H_, "bias_ih");
        b_hh_ = bias_vec(b_hh, 3 * H_, "bias_hh");
        py::gil_scoped_release nogil;
        w_ih_ = std::make_unique<gemm::PackedMatrix>(wi, I_, true, I_, 3 * H_, cpu::active());
        w_hh_ = std::make_unique<gemm::PackedMatrix>(wh, H_, true, H_, 3 * H_, cpu::active());
    }

    // x (B, T, input_size), h0 (B, H) or None -> (output (B, T, H), h_n (B, H)).
    py::tuple call(const py::array& x, const py::object& h0, bool reverse) const {
        require_f32(x, "x");
        require_ndim(x, 3, "x", "(batch, seq, input_size)");
        require_nonempty(x, "x");
        require_c_contiguous(x, "x");
        if (x.shape(2) != I_)
            value_error("expected x of shape (batch, seq, " + std::to_string(I_) + "), got " + shape_str(x));
        const int64_t B = x.shape(0), T = x.shape(1);
        py::array h = empty_f32({B, H_});
        if (h0.is_none()) {
            std::fill(f32_mut(h), f32_mut(h) + B * H_, 0.0f);
        } else {
            if (!py::isinstance<py::array>(h0)) type_error("expected h0 to be a numpy array or None");
            py::array a = h0.cast<py::array>();
            require_f32(a, "h0");
            if (a.ndim() != 2 || a.shape(0) != B || a.shape(1) != H_)
                value_error("expected h0 of shape (" + std::to_string(B) + ", " + std::to_string(H_) + "), got " +
                            shape_str(a));
            require_c_contiguous(a, "h0");
            std::copy(f32(a), f32(a) + B * H_, f32_mut(h));
        }
        py::array out = empty_f32({B, T, H_});
        py::array gi = empty_f32({B, T, 3 * H_});
        const float* xp = f32(x);
        float *gp = f32_mut(gi), *hp = f32_mut(h), *op = f32_mut(out);
        {
            py::gil_scoped_release nogil;
            gemm::sgemm(B * T, xp, I_, *w_ih_, gp, 3 * H_, 0.0f,
                        gemm::Epilogue{b_ih_.empty() ? nullptr : b_ih_.data(), kernels::Activation::none});
            ops::gru_sequence(B, T, H_, gp, *w_hh_, b_hh_.empty() ? nullptr : b_hh_.data(), hp, op, reverse);
        }
        return py::make_tuple(out, h);
    }

    int64_t input_size() const { return I_; }
    int64_t hidden_size() const { return H_; }

private:
    int64_t I_ = 0, H_ = 0;
    std::vector<float> b_ih_, b_hh_;
    std::unique_ptr<gemm::PackedMatrix> w_ih_, w_hh_;
};

}  // namespace

void bind_rnn(py::module_& m) {
    py::class_<GRULayer>(m, "GRULayer",
                         "One direction of one GRU layer (PyTorch's gates r, z, n), its weights packed once:\n"
                         "the input projection of every step is one GEMM, each step one packed GEMM of the\n"
                         "batch's states and the fused gate kernel.")
        .def(py::init<const py::array&, const py::array&, const py::object&, const py::object&>(), py::arg("weight_ih"),
             py::arg("weight_hh"), py::arg("bias_ih") = py::none(), py::arg("bias_hh") = py::none())
        .def("__call__", &GRULayer::call, py::arg("x"), py::arg("h0") = py::none(), py::arg("reverse") = false,
             "x (batch, seq, input_size), h0 (batch, hidden) or None -> (output (batch, seq, hidden), h_n)")
        .def_property_readonly("input_size", &GRULayer::input_size)
        .def_property_readonly("hidden_size", &GRULayer::hidden_size);
}

}  // namespace pyattn::bind

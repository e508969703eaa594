// Whole-layer steps (cpp/layers/): argument checks, scratch from the result-block cache, the GIL released.
#include <cmath>
#include <string>
#include <vector>

#include "bindings/bind_common.h"
#include "gemm/packed_matrix.h"
#include "layers/encoder_layer.h"

namespace pyattn::bind {
namespace {

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
        auto want = [](const gemm::PackedMatrix& m, int64_t k, int64_t n, const char* name) {
            if (m.K() != k || m.N() != n)
                value_error(std::string(name) + " maps " + std::to_string(m.K()) + " -> " + std::to_string(m.N()) +
                            " features, expected " + std::to_string(k) + " -> " + std::to_string(n));
        };
        want(*l.out.w, E_, E_, "out");
        want(*l.qkv.w, E_, 3 * E_, "qkv");
        want(*l.ffn1.w, E_, F_, "ffn1");
        want(*l.ffn2.w, F_, E_, "ffn2");
        if (num_heads < 1 || E_ % num_heads)
            value_error("num_heads (" + std::to_string(num_heads) + ") must divide d_model (" + std::to_string(E_) +
                        ")");
        l.heads = num_heads;
        l.scale = scale.is_none() ? 1.0f / std::sqrt(static_cast<float>(E_ / num_heads)) : scale.cast<float>();
        if (!std::isfinite(l.scale)) value_error("scale must be finite");
        l.act = parse_activation(activation);
        l.norm_first = norm_first;
        l.norm1 = norm(norm1_weight, norm1_bias, norm1_eps, "norm1", norm_[0], norm_[1]);
        l.norm2 = norm(norm2_weight, norm2_bias, norm2_eps, "norm2", norm_[2], norm_[3]);
    }

    py::array call(const py::array& x, const py::object& key_padding_mask) const {
        require_f32(x, "x");
        require_ndim(x, 3, "x", "(batch, seq, d_model)");
        require_nonempty(x, "x");
        require_c_contiguous(x, "x");
        const int64_t B = x.shape(0), L = x.shape(1), M = B * L;
        if (x.shape(2) != E_)
            value_error("expected x of shape (batch, seq, " + std::to_string(E_) + "), got " + shape_str(x));
        const uint8_t* kp = nullptr;
        py::array keep;
        if (!key_padding_mask.is_none()) {
            if (!py::isinstance<py::array>(key_padding_mask))
                type_error("expected key_padding_mask to be a numpy array or None");
            keep = key_padding_mask.cast<py::array>();
            if (!keep.dtype().is(py::dtype::of<bool>()))
                type_error("expected key_padding_mask to be bool (True = padding), got " + dtype_str(keep));
            if (keep.ndim() != 2 || keep.shape(0) != B || keep.shape(1) != L)
                value_error("expected key_padding_mask of shape (" + std::to_string(B) + ", " + std::to_string(L) +
                            "), got " + shape_str(keep));
            require_c_contiguous(keep, "key_padding_mask");
            kp = static_cast<const uint8_t*>(keep.data());
        }
        py::array y = empty_f32({B, L, E_});
        // scratch from the block cache: recently freed blocks are reused, so a model run faults few pages
        py::array qkv = empty_f32({M, 3 * E_}), ctx = empty_f32({M, E_}), h = empty_f32({M, E_});
        py::array ff = empty_f32({M, F_});
        const layers::EncoderScratch s{f32_mut(qkv), f32_mut(ctx), f32_mut(h), f32_mut(ff)};
        const float* xp = f32(x);
        float* yp = f32_mut(y);
        {
            py::gil_scoped_release nogil;
            layers::encoder_layer(l_, B, L, xp, kp, yp, s);
        }
        return y;
    }

private:
    layers::Norm norm(const py::array& w, const py::object& b, float eps, const char* name, std::vector<float>& wv,
                      std::vector<float>& bv) {
        auto vec = [&](const py::array& a, std::vector<float>& v, const std::string& what) {
            require_f32(a, what.c_str());
            if (a.ndim() != 1 || a.shape(0) != E_)
                value_error("expected " + what + " of shape (" + std::to_string(E_) + ",), got " + shape_str(a));
            require_c_contiguous(a, what.c_str());
            v.assign(f32(a), f32(a) + E_);
        };
        vec(w, wv, std::string(name) + "_weight");
        if (!b.is_none()) vec(b.cast<py::array>(), bv, std::string(name) + "_bias");
        if (!(eps >= 0.0f) || !std::isfinite(eps)) value_error(std::string(name) + "_eps must be finite and >= 0");
        return layers::Norm{wv.data(), bv.empty() ? nullptr : bv.data(), eps};
    }

    py::object refs_[4];  // the PackedLinear objects whose matrices l_ points into
    std::vector<float> norm_[4];
    layers::EncoderLayer l_{};
    int64_t E_ = 0, F_ = 0;
};

}  // namespace

void bind_layers(py::module_& m) {
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
             "x (B, L, E) float32 C-contiguous; key_padding_mask (B, L) bool, True = padding. Returns (B, L, E).");
}

}  // namespace pyattn::bind

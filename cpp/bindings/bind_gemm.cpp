#include <memory>

#include "bindings/bind_common.h"
#include "cpu/cpu.h"
#include "gemm/gemm.h"
#include "gemm/packed_matrix.h"
#include "gemm/weight_type.h"

namespace pyattn::bind {

kernels::Activation parse_activation(const std::string& s) {
    if (s == "none" || s.empty()) return kernels::Activation::none;
    if (s == "relu") return kernels::Activation::relu;
    if (s == "gelu") return kernels::Activation::gelu_erf;
    if (s == "gelu_tanh") return kernels::Activation::gelu_tanh;
    if (s == "silu") return kernels::Activation::silu;
    value_error("unknown activation '" + s + "': expected one of none, relu, gelu, gelu_tanh, silu");
}

namespace {

// Checks a bias of `n` floats (or None) and returns its data pointer (null for None).
const float* check_bias(const py::object& bias, int64_t n, py::array& keep) {
    if (bias.is_none()) return nullptr;
    if (!py::isinstance<py::array>(bias)) type_error("expected bias to be a numpy array or None");
    keep = bias.cast<py::array>();
    require_f32(keep, "bias");
    if (keep.ndim() != 1 || keep.shape(0) != n)
        value_error("expected bias of shape (" + std::to_string(n) + ",), got " + shape_str(keep));
    require_c_contiguous(keep, "bias");
    return f32(keep);
}

// (..., K) activations: checks and returns M = prod(leading dims).
int64_t check_activations(const py::array& x, int64_t K, const char* name) {
    require_f32(x, name);
    require_min_ndim(x, 1, name, "(..., in_features)");
    require_nonempty(x, name);
    require_c_contiguous(x, name);
    if (x.shape(x.ndim() - 1) != K)
        value_error(std::string("expected ") + name + " of shape (..., " + std::to_string(K) + "), got " +
                    shape_str(x));
    return static_cast<int64_t>(x.size()) / K;
}

py::array prepare_out(const py::object& out, const py::array& x, int64_t N) {
    std::vector<int64_t> shape = shape_of(x);
    shape.back() = N;
    if (out.is_none()) return empty_f32(shape);
    if (!py::isinstance<py::array>(out)) type_error("expected out to be a numpy array or None");
    py::array o = out.cast<py::array>();
    require_out(o, shape, "out");
    require_no_overlap(o, x, "out", "x");
    return o;
}

class PackedLinear {
public:
    // weight: float32 or float16 (out_features, in_features). storage: a weight type's name (weight_type.h), or ""
    // for the weight's own dtype. Every type computes in float32 (int8: int32 sums, dequantized in the epilogue).
    // input_scale (int8 only): in_features positive floats a; the weight is quantized as W / a (per input channel)
    // and the activations are multiplied by a before they are quantized (PackedMatrix::set_input_scale).
    PackedLinear(const py::array& weight, const py::object& bias, const std::string& storage,
                 const py::object& input_scale) {
        const bool w_half = weight.dtype().kind() == 'f' && weight.itemsize() == 2;
        if (!w_half) require_f32(weight, "weight");
        require_ndim(weight, 2, "weight", "(out_features, in_features)");
        require_nonempty(weight, "weight");
        require_c_contiguous(weight, "weight");
        gemm::WeightType type = w_half ? gemm::WeightType::f16 : gemm::WeightType::f32;
        if (!storage.empty()) {
            try {
                type = gemm::parse_weight_type(storage);
            } catch (const std::invalid_argument&) {
                value_error("storage must be one of " + gemm::weight_type_names() + ", got '" + storage + "'");
            }
        }
        N_ = weight.shape(0);
        K_ = weight.shape(1);
        py::array keep;
        const float* b = check_bias(bias, N_, keep);
        if (b) bias_.assign(b, b + N_);
        const auto* w16 = w_half ? static_cast<const uint16_t*>(weight.data()) : nullptr;
        const float* w32 = w_half ? nullptr : f32(weight);
        if (!input_scale.is_none()) {
            if (type != gemm::WeightType::i8) value_error("input_scale needs storage 'int8', got '" + storage + "'");
            if (w_half) type_error("input_scale needs a float32 weight");
            py::array a = input_scale.cast<py::array>();
            require_f32(a, "input_scale");
            require_c_contiguous(a, "input_scale");
            if (a.ndim() != 1 || a.shape(0) != K_)
                value_error("expected input_scale of shape (" + std::to_string(K_) + ",), got " + shape_str(a));
            const float* ap = f32(a);
            gemm::PackedMatrix::check_input_scale(ap, K_);  // before the packing it would waste
            std::vector<float> divided(static_cast<std::size_t>(N_ * K_));
            for (int64_t j = 0; j < N_; ++j)
                for (int64_t p = 0; p < K_; ++p) divided[j * K_ + p] = w32[j * K_ + p] / ap[p];
            py::gil_scoped_release nogil;
            packed_ = std::make_unique<gemm::PackedMatrix>(type, divided.data(), nullptr, K_, K_, N_, cpu::active());
            packed_->set_input_scale(ap);
            return;
        }
        py::gil_scoped_release nogil;
        packed_ = std::make_unique<gemm::PackedMatrix>(type, w32, w16, K_, K_, N_, cpu::active());
    }

    // An int8 weight quantized elsewhere (see PackedMatrix): q (out, in) int8, scales (out,) or (out, nblocks)
    // float32 with w ~ q * scale.
    static PackedLinear from_int8(const py::array& q, const py::array& scales, const py::object& bias) {
        if (q.dtype().kind() != 'i' || q.itemsize() != 1) type_error("expected q to be int8, got " + dtype_str(q));
        require_ndim(q, 2, "q", "(out_features, in_features)");
        require_nonempty(q, "q");
        require_c_contiguous(q, "q");
        require_f32(scales, "scales");
        require_c_contiguous(scales, "scales");
        const int64_t N = q.shape(0), K = q.shape(1), nb = (K + kernels::kQBlock - 1) / kernels::kQBlock;
        const int64_t ns = scales.ndim() == 1 ? 1 : scales.ndim() == 2 ? scales.shape(1) : -1;
        if (scales.shape(0) != N || (ns != 1 && ns != nb))
            value_error("expected scales of shape (" + std::to_string(N) + ",) or (" + std::to_string(N) + ", " +
                        std::to_string(nb) + "), got " + shape_str(scales));
        PackedLinear lin;
        lin.N_ = N;
        lin.K_ = K;
        py::array keep;
        const float* b = check_bias(bias, N, keep);
        if (b) lin.bias_.assign(b, b + N);
        const auto* qp = static_cast<const int8_t*>(q.data());
        const float* sp = f32(scales);
        py::gil_scoped_release nogil;
        lin.packed_ = std::make_unique<gemm::PackedMatrix>(qp, K, sp, ns, K, N, cpu::active());
        return lin;
    }

    // A 4-, 5- or 6-bit weight as GGUF stores it: raw (out, in / 32 * block bytes) uint8, 18, 20, 22, 24 or 28 bytes
    // per block for q4_0, q4_1, q5_0, q5_1, q6_k, 144, 176, 84 or 110 per 256 for q4_k, q5_k, q2_k, q3_k (see
    // PackedMatrix). The bytes are checked for shape only: every nibble, bit, sub-scale and half is a valid value.
    static PackedLinear from_gguf(const py::array& raw, const std::string& type, int64_t in_features,
                                  const py::object& bias) {
        gemm::WeightType t = gemm::WeightType::f32;
        bool block = false;
        try {
            t = gemm::parse_weight_type(type);
            block = gemm::info(t).family == gemm::WeightFamily::block;
        } catch (const std::invalid_argument&) {
        }
        if (!block) value_error("type must be one of " + gemm::weight_type_names(true) + ", got '" + type + "'");
        if (raw.dtype().kind() != 'u' || raw.itemsize() != 1)
            type_error("expected raw to be uint8, got " + dtype_str(raw));
        require_ndim(raw, 2, "raw", "(out_features, blocks * block bytes)");
        require_nonempty(raw, "raw");
        require_c_contiguous(raw, "raw");
        const int64_t unit = gemm::super_blocks(t) ? gemm::kSuperBlock : kernels::kQBlock;
        if (in_features <= 0 || in_features % unit)
            value_error("in_features must be a positive multiple of " + std::to_string(unit) + " for " + type +
                        ", got " + std::to_string(in_features));
        const int64_t N = raw.shape(0), row = gemm::gguf_row_bytes(t, in_features);
        if (raw.shape(1) != row)
            value_error("expected raw of shape (" + std::to_string(N) + ", " + std::to_string(row) + ") for " + type +
                        " with in_features " + std::to_string(in_features) + ", got " + shape_str(raw));
        PackedLinear lin;
        lin.N_ = N;
        lin.K_ = in_features;
        py::array keep;
        const float* b = check_bias(bias, N, keep);
        if (b) lin.bias_.assign(b, b + N);
        const auto* rp = static_cast<const uint8_t*>(raw.data());
        py::gil_scoped_release nogil;
        lin.packed_ = std::make_unique<gemm::PackedMatrix>(t, rp, in_features, N, cpu::active());
        return lin;
    }

    py::array call(const py::array& x, const std::string& activation, const py::object& out) const {
        const auto act = parse_activation(activation);
        const int64_t M = check_activations(x, K_, "x");
        py::array o = prepare_out(out, x, N_);
        const float* xp = f32(x);
        float* op = f32_mut(o);
        {
            py::gil_scoped_release nogil;
            gemm::sgemm(M, xp, K_, *packed_, op, N_, 0.0f, gemm::Epilogue{bias_.empty() ? nullptr : bias_.data(), act});
        }
        return o;
    }

    py::array weight() const {
        py::array w = py::array_t<float>({N_, K_});  // numpy's allocator: a one-off result, not for the block cache
        float* wp = f32_mut(w);
        py::gil_scoped_release nogil;
        packed_->unpack_transposed(wp);
        return w;
    }

    // Rows `ids` of the weight (out_features indices), unpacked: an embedding lookup in a table held once, packed
    // for the output projection that shares it (tied embeddings).
    py::array rows(const py::array& ids) const {
        if (ids.dtype().kind() != 'i' && ids.dtype().kind() != 'u')
            type_error("expected integer ids, got " + dtype_str(ids));
        py::array_t<int64_t, py::array::c_style | py::array::forcecast> idx(ids);
        std::vector<int64_t> shape = shape_of(idx);
        const int64_t n = static_cast<int64_t>(idx.size());
        const int64_t* ip = idx.data();
        for (int64_t i = 0; i < n; ++i)
            if (ip[i] < 0 || ip[i] >= N_)
                value_error("row " + std::to_string(ip[i]) + " is out of range for " + std::to_string(N_) + " rows");
        shape.push_back(K_);
        py::array out = empty_f32(shape);
        float* op = f32_mut(out);
        py::gil_scoped_release nogil;
        for (int64_t i = 0; i < n; ++i) packed_->unpack_row(ip[i], op + i * K_);
        return out;
    }

    py::object bias() const {
        if (bias_.empty()) return py::none();
        py::array b = empty_f32({N_});
        std::copy(bias_.begin(), bias_.end(), f32_mut(b));
        return b;
    }

    const gemm::PackedMatrix& matrix() const { return *packed_; }
    const float* bias_data() const { return bias_.empty() ? nullptr : bias_.data(); }
    int64_t in_features() const { return K_; }
    int64_t out_features() const { return N_; }
    bool has_bias() const { return !bias_.empty(); }
    std::string isa() const { return packed_->kernels().name; }
    std::string storage() const { return gemm::info(packed_->type()).name; }
    std::size_t nbytes() const { return packed_->size_bytes() + bias_.size() * sizeof(float); }

private:
    PackedLinear() = default;
    int64_t N_ = 0, K_ = 0;
    std::vector<float> bias_;
    std::unique_ptr<gemm::PackedMatrix> packed_;
};

py::array matmul(const py::array& a, const py::array& b, bool transpose_b, const py::object& out) {
    require_f32(a, "a");
    require_f32(b, "b");
    require_min_ndim(a, 2, "a", "(..., M, K)");
    require_min_ndim(b, 2, "b", transpose_b ? "(..., N, K)" : "(..., K, N)");
    require_nonempty(a, "a");
    require_nonempty(b, "b");
    require_last_axis_contiguous(a, "a");
    require_last_axis_contiguous(b, "b");
    const int na = a.ndim(), nb = b.ndim();
    const int64_t M = a.shape(na - 2), K = a.shape(na - 1);
    const int64_t Kb = transpose_b ? b.shape(nb - 1) : b.shape(nb - 2);
    const int64_t N = transpose_b ? b.shape(nb - 2) : b.shape(nb - 1);
    if (K != Kb)
        value_error("matmul: inner dimensions differ: a " + shape_str(a) + " and b " + shape_str(b) +
                    (transpose_b ? " (transpose_b=True: b is (..., N, K))" : ""));
    // numpy broadcasting of the batch dimensions
    const int nbatch = std::max(na, nb) - 2;
    std::vector<int64_t> bshape(nbatch), sa(nbatch, 0), sb(nbatch, 0);
    for (int i = 0; i < nbatch; ++i) {
        const int ia = i - (nbatch - (na - 2)), ib = i - (nbatch - (nb - 2));
        const int64_t da = ia >= 0 ? a.shape(ia) : 1, db = ib >= 0 ? b.shape(ib) : 1;
        if (da != db && da != 1 && db != 1)
            value_error("matmul: batch dimensions of a " + shape_str(a) + " and b " + shape_str(b) +
                        " do not broadcast");
        bshape[i] = std::max(da, db);
        if (ia >= 0 && da != 1) sa[i] = estride(a, ia);
        if (ib >= 0 && db != 1) sb[i] = estride(b, ib);
    }
    std::vector<int64_t> oshape = bshape;
    oshape.push_back(M);
    oshape.push_back(N);
    const int64_t batch = checked_numel(bshape, "batch");
    checked_numel(oshape, "result");
    py::array o;
    if (out.is_none()) {
        o = empty_f32(oshape);
    } else {
        if (!py::isinstance<py::array>(out)) type_error("expected out to be a numpy array or None");
        o = out.cast<py::array>();
        require_out(o, oshape, "out");
        require_no_overlap(o, a, "out", "a");
        require_no_overlap(o, b, "out", "b");
    }
    const int64_t lda = estride(a, na - 2), ldb = estride(b, nb - 2);
    const float* ap = f32(a);
    const float* bp = f32(b);
    float* op = f32_mut(o);
    const gemm::BRef bref{bp, ldb, transpose_b};

    // A single B and batch rows of A laid out as one long matrix: one GEMM with M * batch rows.
    bool b_shared = true;
    for (int i = 0; i < nbatch; ++i) b_shared = b_shared && sb[i] == 0;
    bool a_flat = true;
    int64_t expect = M * lda;
    for (int i = nbatch - 1; i >= 0 && a_flat; --i) {
        a_flat = bshape[i] == 1 || sa[i] == expect;
        expect *= bshape[i];
    }
    if (b_shared && a_flat) {
        py::gil_scoped_release nogil;
        gemm::sgemm(M * batch, N, K, ap, lda, bref, op, N);
        return o;
    }
    std::vector<int64_t> aoff(batch), boff(batch);
    std::vector<int64_t> idx(nbatch, 0);
    for (int64_t t = 0; t < batch; ++t) {
        int64_t oa = 0, ob = 0;
        for (int i = 0; i < nbatch; ++i) {
            oa += idx[i] * sa[i];
            ob += idx[i] * sb[i];
        }
        aoff[t] = oa;
        boff[t] = ob;
        for (int i = nbatch - 1; i >= 0; --i) {
            if (++idx[i] < bshape[i]) break;
            idx[i] = 0;
        }
    }
    {
        py::gil_scoped_release nogil;
        gemm::sgemm_batched(batch, M, N, K, ap, aoff.data(), lda, bref, boff.data(), op, M * N, N);
    }
    return o;
}

py::array linear(const py::array& x, const py::array& weight, const py::object& bias, const std::string& activation,
                 const py::object& out) {
    const auto act = parse_activation(activation);
    require_f32(weight, "weight");
    require_ndim(weight, 2, "weight", "(out_features, in_features)");
    require_nonempty(weight, "weight");
    require_c_contiguous(weight, "weight");
    const int64_t N = weight.shape(0), K = weight.shape(1);
    const int64_t M = check_activations(x, K, "x");
    py::array keep;
    const float* bp = check_bias(bias, N, keep);
    py::array o = prepare_out(out, x, N);
    require_no_overlap(o, weight, "out", "weight");
    if (bp) require_no_overlap(o, keep, "out", "bias");
    const float* xp = f32(x);
    const float* wp = f32(weight);
    float* op = f32_mut(o);
    {
        py::gil_scoped_release nogil;
        gemm::sgemm(M, N, K, xp, K, gemm::BRef{wp, K, true}, op, N, 0.0f, gemm::Epilogue{bp, act});
    }
    return o;
}

}  // namespace

const gemm::PackedMatrix& packed_matrix_of(const py::object& lin, const char* name, const float** bias) {
    if (!py::isinstance<PackedLinear>(lin))
        type_error(std::string("expected ") + name + " to be a pyattn PackedLinear, got " +
                   std::string(py::str(py::type::of(lin).attr("__name__"))));
    const PackedLinear& p = lin.cast<const PackedLinear&>();
    *bias = p.bias_data();
    return p.matrix();
}

void bind_gemm(py::module_& m) {
    m.def(
        "weight_types",
        [] {
            std::vector<std::string> names;
            for (const auto& t : gemm::kWeightTypes) names.emplace_back(t.name);
            return names;
        },
        "Names of the weight types PackedLinear can hold.");
    m.def("matmul", &matmul, py::arg("a"), py::arg("b"), py::arg("transpose_b") = false, py::arg("out") = py::none(),
          "a (..., M, K) @ b (..., K, N) (or b (..., N, K) with transpose_b) with numpy batch broadcasting.\n"
          "float32 only; the last axis of a and b must be contiguous; out is C-contiguous float32.");
    m.def("linear", &linear, py::arg("x"), py::arg("weight"), py::arg("bias") = py::none(),
          py::arg("activation") = "none", py::arg("out") = py::none(),
          "act(x @ weight.T + bias): x (..., in) C-contiguous, weight (out, in) as in torch.nn.Linear.");
    py::class_<PackedLinear>(
        m, "PackedLinear",
        "A Linear layer whose weight is packed once for the GEMM micro-kernel (at construction),\n"
        "so each call packs only its activations. weight (out_features, in_features) float32 or\n"
        "float16; storage: 'float32', 'float16', 'bfloat16', 'int8' (blocks of 32 along in_features\n"
        "with their own scales, activations quantized likewise), 'q4_0' / 'q4_1' / 'q5_0' / 'q5_1'\n"
        "(GGUF's 4- and 5-bit blocks), 'q6_k' (6-bit, GGUF's Q6_K values), 'q4_k' / 'q5_k' / 'q2_k' /\n"
        "'q3_k' (GGUF's K-quants: super-blocks of 256, in_features a multiple of 256), or '' for the\n"
        "weight's own dtype.\n"
        "input_scale (int8, float32\n"
        "weight): in_features positive floats a; the weight is quantized as weight / a per input feature\n"
        "and each x * a before it is quantized, so that outlier features of x do not take every block's\n"
        "int8 range.")
        .def(py::init<const py::array&, const py::object&, const std::string&, const py::object&>(), py::arg("weight"),
             py::arg("bias") = py::none(), py::arg("storage") = "", py::arg("input_scale") = py::none())
        .def_static("from_int8", &PackedLinear::from_int8, py::arg("q"), py::arg("scales"),
                    py::arg("bias") = py::none(),
                    "An int8 weight quantized elsewhere, held as given: q (out, in) int8 and scales (out,) (one per\n"
                    "row, as CTranslate2's) or (out, ceil(in / 32)) (one per block of 32, as GGUF's Q8_0), float32,\n"
                    "with weight ~ q * scale.")
        .def_static("from_gguf", &PackedLinear::from_gguf, py::arg("raw"), py::arg("type"), py::arg("in_features"),
                    py::arg("bias") = py::none(),
                    "A 4-, 5- or 6-bit weight as GGUF stores it, read as stored by the GEMM (no widening in\n"
                    "memory): raw (out, in / 32 * bytes per block) uint8, type 'q4_0' (18-byte blocks), 'q4_1'\n"
                    "(20 bytes), 'q5_0' (22), 'q5_1' (24), 'q6_k' (28: Q6_K's values re-laid per 32 by\n"
                    "pyattn.io.gguf.q6_k_as_q6), 'q4_k' (144 bytes per 256), 'q5_k' (176), 'q2_k' (84) or\n"
                    "'q3_k' (110).")
        .def("__call__", &PackedLinear::call, py::arg("x"), py::arg("activation") = "none", py::arg("out") = py::none(),
             "act(x @ weight.T + bias) for x (..., in_features) float32 C-contiguous.")
        .def("weight", &PackedLinear::weight, "The weight (out_features, in_features), unpacked into a new array.")
        .def("rows", &PackedLinear::rows, py::arg("ids"),
             "Rows `ids` (any shape of integers in [0, out_features)) of the weight, unpacked: (*ids.shape,\n"
             "in_features) float32 -- an embedding lookup in a table packed once for a tied output projection.")
        .def_property_readonly("bias", &PackedLinear::bias, "A copy of the bias, or None.")
        .def_property_readonly("in_features", &PackedLinear::in_features)
        .def_property_readonly("out_features", &PackedLinear::out_features)
        .def_property_readonly("has_bias", &PackedLinear::has_bias)
        .def_property_readonly("isa", &PackedLinear::isa, "Kernel set the weight was packed for.")
        .def_property_readonly(
            "storage", &PackedLinear::storage,
            "How the weight is held: 'float32', 'float16', 'bfloat16', 'int8', 'q4_0', 'q4_1', 'q5_0',\n"
            "'q5_1', 'q6_k', 'q4_k', 'q5_k', 'q2_k' or 'q3_k'.")
        .def_property_readonly("nbytes", &PackedLinear::nbytes, "Bytes held by the packed weight and bias.");
}

}  // namespace pyattn::bind

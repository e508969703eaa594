// Argument checking shared by the bindings. The bindings take numpy arrays as they are (no implicit
// conversion): a wrong dtype is a TypeError, a wrong shape or layout a ValueError, each naming the
// argument, what was expected and what arrived. The documented conversions (float64 -> float32,
// non-contiguous -> copy) happen in pyattn/functional.py, in Python, where the user can see them.
#pragma once
// stl.h in every binding unit: a unit that converts a std::vector or std::string container without it compiles
// pybind11's generic caster for that type, and which unit's caster the linker keeps is then luck (an ODR violation: a
// RelWithDebInfo build's `weight_types()` raised 'Unregistered type: std::vector<std::string>').
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "kernels/kernels.h"

namespace pyattn::gemm {
class PackedMatrix;
}

namespace pyattn::bind {

namespace py = pybind11;

// "none", "relu", "gelu", "gelu_tanh", "silu"; ValueError otherwise.
kernels::Activation parse_activation(const std::string& s);
// The packed weight of a PackedLinear object, and its bias (null when it has none); TypeError for anything else.
const gemm::PackedMatrix& packed_matrix_of(const py::object& lin, const char* name, const float** bias);

std::string shape_str(const py::array& a);
std::string dtype_str(const py::array& a);

// Throws ValueError if `a` starts or steps at a byte offset that is not a multiple of its item size (reading
// it would be undefined behaviour). Both contiguity checks below include it, so every array that reaches a
// kernel is checked once.
void require_aligned(const py::array& a, const char* name);
// Throws TypeError unless `a` is float32.
void require_f32(const py::array& a, const char* name);
// Throws ValueError unless `a` has exactly `ndim` dimensions (`what` describes them, e.g. "(B, H, Lq, D)").
void require_ndim(const py::array& a, int ndim, const char* name, const char* what);
void require_min_ndim(const py::array& a, int ndim, const char* name, const char* what);
// Throws ValueError on a dimension of length 0.
void require_nonempty(const py::array& a, const char* name);
// Throws ValueError unless C-contiguous.
void require_c_contiguous(const py::array& a, const char* name);
// Throws ValueError unless the last axis is contiguous and every other stride is a non-negative multiple
// of the item size (a strided view the kernels can walk without copying).
void require_last_axis_contiguous(const py::array& a, const char* name);
// Throws ValueError unless `a` is a writable float32 C-contiguous array of exactly `shape`.
void require_out(const py::array& a, const std::vector<int64_t>& shape, const char* name);
// Throws ValueError if `out` may share memory with `in` (outputs are never written over inputs).
void require_no_overlap(const py::array& out, const py::array& in, const char* out_name, const char* in_name);

// Stride of axis i in elements (not bytes).
int64_t estride(const py::array& a, int i);
std::vector<int64_t> shape_of(const py::array& a);
// Product of dims, with an overflow check.
int64_t checked_numel(const std::vector<int64_t>& shape, const char* name);

[[noreturn]] void value_error(const std::string& msg);
[[noreturn]] void type_error(const std::string& msg);

inline const float* f32(const py::array& a) { return static_cast<const float*>(a.data()); }
inline float* f32_mut(py::array& a) { return static_cast<float*>(a.mutable_data()); }

py::array_t<float> empty_f32(const std::vector<int64_t>& shape);

void bind_cpu(py::module_& m);
void bind_gemm(py::module_& m);
void bind_ops(py::module_& m);
void bind_attention(py::module_& m);
void bind_rnn(py::module_& m);
void bind_scores(py::module_& m);
void bind_layers(py::module_& m);

}  // namespace pyattn::bind

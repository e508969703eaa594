#include <cstdint>
#include <cstdlib>
#include <map>
#include <mutex>
#include <stdexcept>

#include "bindings/bind_common.h"
#include "cpu/asan.h"

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace pyattn::bind {

std::string shape_str(const py::array& a) {
    std::string s = "(";
    for (py::ssize_t i = 0; i < a.ndim(); ++i) {
        if (i) s += ", ";
        s += std::to_string(a.shape(i));
    }
    if (a.ndim() == 1) s += ",";
    return s + ")";
}

std::string dtype_str(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

void value_error(const std::string& msg) { throw py::value_error(msg); }
void type_error(const std::string& msg) { throw py::type_error(msg); }

void require_ndim(const py::array& a, int ndim, const char* name, const char* what) {
    if (a.ndim() != ndim) value_error(std::string("expected ") + name + " of shape " + what + ", got " + shape_str(a));
}

void require_min_ndim(const py::array& a, int ndim, const char* name, const char* what) {
    if (a.ndim() < ndim) value_error(std::string("expected ") + name + " of shape " + what + ", got " + shape_str(a));
}

void require_nonempty(const py::array& a, const char* name) {
    for (py::ssize_t i = 0; i < a.ndim(); ++i)
        if (a.shape(i) == 0)
            value_error(std::string(name) + " has a zero-length dimension: shape " + shape_str(a) +
                        " (empty inputs are refused)");
}

// Reading a float at an address that is not a multiple of 4 is undefined behaviour (UBSan stops on it), and
// numpy makes such arrays easily: np.frombuffer(buf, np.float32, offset=1).
void require_aligned(const py::array& a, const char* name) {
    const auto item = static_cast<std::uintptr_t>(a.itemsize());
    bool ok = reinterpret_cast<std::uintptr_t>(a.data()) % item == 0;
    for (py::ssize_t i = 0; ok && i < a.ndim(); ++i) ok = a.shape(i) < 2 || a.strides(i) % a.itemsize() == 0;
    if (!ok)
        value_error(std::string("expected ") + name + " to be aligned to its " + std::to_string(item) +
                    "-byte items (shape " + shape_str(a) + ", it starts or steps at an odd byte offset); pass " +
                    "np.require(" + name + ", requirements='CA')");
}

void require_f32(const py::array& a, const char* name) {
    if (!a.dtype().is(py::dtype::of<float>()))
        type_error(std::string("expected ") + name + " to be float32, got " + dtype_str(a) + " of shape " +
                   shape_str(a));
}

void require_c_contiguous(const py::array& a, const char* name) {
    require_aligned(a, name);
    if (!(a.flags() & py::array::c_style))
        value_error(std::string("expected ") + name + " to be C-contiguous (shape " + shape_str(a) +
                    "); pass np.ascontiguousarray(" + name + ")");
}

void require_last_axis_contiguous(const py::array& a, const char* name) {
    require_aligned(a, name);
    const py::ssize_t item = a.itemsize();
    for (py::ssize_t i = 0; i < a.ndim(); ++i) {
        const py::ssize_t st = a.strides(i);
        const bool ok = i == a.ndim() - 1 ? (st == item || a.shape(i) == 1) : (st >= 0 && st % item == 0);
        if (!ok)
            value_error(std::string("expected ") + name + " to have a contiguous last axis and non-negative strides " +
                        "(shape " + shape_str(a) + "); pass np.ascontiguousarray(" + name + ")");
    }
}

void require_out(const py::array& a, const std::vector<int64_t>& shape, const char* name) {
    require_f32(a, name);
    bool same = a.ndim() == static_cast<py::ssize_t>(shape.size());
    for (std::size_t i = 0; same && i < shape.size(); ++i) same = a.shape(i) == shape[i];
    if (!same) {
        std::string want = "(";
        for (std::size_t i = 0; i < shape.size(); ++i) want += (i ? ", " : "") + std::to_string(shape[i]);
        value_error(std::string("expected ") + name + " of shape " + want + (shape.size() == 1 ? ",)" : ")") +
                    ", got " + shape_str(a));
    }
    require_c_contiguous(a, name);
    if (!a.writeable()) value_error(std::string(name) + " is read-only");
}

void require_no_overlap(const py::array& out, const py::array& in, const char* out_name, const char* in_name) {
    // Conservative byte-range test (numpy's may_share_memory): a false alarm only forces a copy upstream.
    auto range = [](const py::array& a) {
        const char* lo = static_cast<const char*>(a.data());
        const char* hi = lo;
        for (py::ssize_t i = 0; i < a.ndim(); ++i) {
            const py::ssize_t ext = (a.shape(i) - 1) * a.strides(i);
            (ext < 0 ? lo : hi) += ext;
        }
        return std::pair<const char*, const char*>(lo, hi + a.itemsize());
    };
    if (out.size() == 0 || in.size() == 0) return;
    const auto [a0, a1] = range(out);
    const auto [b0, b1] = range(in);
    if (a0 < b1 && b0 < a1)
        value_error(std::string(out_name) + " overlaps " + in_name + " in memory; pass a separate output array");
}

int64_t estride(const py::array& a, int i) { return a.strides(i) / static_cast<py::ssize_t>(a.itemsize()); }

std::vector<int64_t> shape_of(const py::array& a) {
    std::vector<int64_t> s(a.ndim());
    for (py::ssize_t i = 0; i < a.ndim(); ++i) s[i] = a.shape(i);
    return s;
}

int64_t checked_numel(const std::vector<int64_t>& shape, const char* name) {
    int64_t n = 1;
    for (int64_t d : shape) {
        if (d < 0 || (d != 0 && n > std::numeric_limits<int64_t>::max() / 8 / d))
            value_error(std::string(name) + " is too large");
        n *= d;
    }
    return n;
}

namespace {

// Large result arrays come from a small cache of recently freed blocks instead of fresh pages: a model run
// allocates the same few shapes again and again, and each fresh multi-megabyte allocation otherwise costs a
// page fault (and the kernel's page clearing) per 4 KiB touched -- about 6% of a BERT batch.
class BlockCache {
public:
    static constexpr std::size_t kMinBytes = 1 << 20;  // smaller arrays: numpy's allocator is fine
    static constexpr std::size_t kMaxCached = 128u << 20;

    void* get(std::size_t bytes) {
        if (!kAsan) {  // sanitized builds: no reuse, so that ASan's quarantine catches a use after free
            std::lock_guard<std::mutex> lock(mu_);
            auto it = free_.find(bytes);
            if (it != free_.end()) {
                void* p = it->second;
                free_.erase(it);
                cached_ -= bytes;
                return p;
            }
        }
        void* p = std::aligned_alloc(64, bytes);
        if (!p) throw std::bad_alloc();
        return p;
    }

    void put(void* p, std::size_t bytes) {
        if (kAsan) {
            std::free(p);
            return;
        }
        std::lock_guard<std::mutex> lock(mu_);
        while (cached_ + bytes > kMaxCached && !free_.empty()) {  // evict the largest blocks first
            auto last = std::prev(free_.end());
            std::free(last->second);
            cached_ -= last->first;
            free_.erase(last);
        }
        if (cached_ + bytes > kMaxCached) {
            std::free(p);
            return;
        }
        free_.emplace(bytes, p);
        cached_ += bytes;
    }

    // Frees every cached block; returns the bytes released.
    std::size_t clear() {
        std::lock_guard<std::mutex> lock(mu_);
        const std::size_t n = cached_;
        for (auto& kv : free_) std::free(kv.second);
        free_.clear();
        cached_ = 0;
        return n;
    }

    static BlockCache& instance() {
        static BlockCache* c = new BlockCache();  // never destroyed: arrays may outlive module teardown
        return *c;
    }

private:
    std::mutex mu_;
    std::multimap<std::size_t, void*> free_;
    std::size_t cached_ = 0;
};

struct CachedBlock {
    void* ptr;
    std::size_t bytes;
};

}  // namespace

py::array_t<float> empty_f32(const std::vector<int64_t>& shape) {
    const int64_t n = checked_numel(shape, "result");
    std::vector<py::ssize_t> s(shape.begin(), shape.end());
    const std::size_t bytes = (static_cast<std::size_t>(n) * sizeof(float) + 4095) / 4096 * 4096;
    if (bytes < BlockCache::kMinBytes) return py::array_t<float>(s);
    auto* block = new CachedBlock{BlockCache::instance().get(bytes), bytes};
    py::capsule owner(block, [](void* b) {
        auto* cb = static_cast<CachedBlock*>(b);
        BlockCache::instance().put(cb->ptr, cb->bytes);
        delete cb;
    });
    return py::array_t<float>(s, static_cast<float*>(block->ptr), owner);
}

bool trim_heap() {
#if defined(__GLIBC__)
    return malloc_trim(0) != 0;  // glibc keeps the heap's free pages after large frees
#else
    return false;
#endif
}

std::size_t release_cached_memory() {
    const std::size_t n = BlockCache::instance().clear();
    trim_heap();  // hand the heap's free pages back as well
    return n;
}

}  // namespace pyattn::bind

PYBIND11_MODULE(_core, m) {
    m.doc() =
        "pyattn's C++ core: SIMD/OpenMP GEMM, softmax, layer norm, activations and fused attention.\n"
        "Functions here take float32 arrays as they are and refuse anything else; pyattn.functional\n"
        "is the user-facing layer that converts and documents.";
    m.def("release_memory", &pyattn::bind::release_cached_memory,
          "Frees the cache of large result blocks (kept for reuse between calls, at most 128 MiB) and returns the\n"
          "allocator's free pages to the system. Returns the bytes of cached blocks freed.");
    m.def("trim_heap", &pyattn::bind::trim_heap, pybind11::call_guard<pybind11::gil_scoped_release>(),
          "Returns the allocator's free heap pages to the system (glibc's malloc_trim), without touching the block\n"
          "cache. Model loaders call it: once glibc has raised its mmap threshold, a load's transient buffers come\n"
          "from the heap and would otherwise stay resident. True if memory was released.");
    pyattn::bind::bind_cpu(m);
    pyattn::bind::bind_gemm(m);
    pyattn::bind::bind_ops(m);
    pyattn::bind::bind_attention(m);
    pyattn::bind::bind_rnn(m);
    pyattn::bind::bind_scores(m);
    pyattn::bind::bind_layers(m);
}

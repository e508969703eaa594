#include <omp.h>

#include <chrono>
#include <stdexcept>

#include "bindings/bind_common.h"
#include "cpu/buffer.h"
#include "cpu/cpu.h"
#include "gemm/gemm.h"
#include "layers/decoder_layer.h"

namespace pyattn::bind {

void bind_cpu(py::module_& m) {
    m.def(
        "cpu_features",
        [] {
            const auto& f = cpu::features();
            py::dict d;
            d["avx2"] = f.avx2;
            d["fma"] = f.fma;
            d["avx512f"] = f.avx512f;
            d["avx512dq"] = f.avx512dq;
            d["avx512bw"] = f.avx512bw;
            d["avx512vl"] = f.avx512vl;
            d["f16c"] = f.f16c;
            d["avx_vnni"] = f.avx_vnni;
            d["avx512_vnni"] = f.avx512_vnni;
            d["avx512_bf16"] = f.avx512_bf16;
            d["amx_tile"] = f.amx_tile;
            d["amx_int8"] = f.amx_int8;
            d["amx_bf16"] = f.amx_bf16;
            return d;
        },
        "CPU features detected with cpuid (and OS support for the wider registers).");
    m.def("available_isas", &cpu::available_isas, "Kernel sets this CPU can run, best last.");
    m.def(
        "test_isas", &cpu::test_isas,
        "Test-only kernel sets this CPU can run (set_isa accepts them; never picked): the amx set's loops on software "
        "tiles, the avx_vnni set's kernels in EVEX encodings.");
    m.def("amx_granted", &cpu::amx_granted,
          "Whether Linux granted this process the AMX tile state (asked once; False without AMX).");
    m.def("get_isa", [] { return std::string(cpu::active().name); }, "Name of the kernel set in use.");
    m.def(
        "multiplies_bf16_pairs", [] { return cpu::active().bf16pairs.micro != nullptr; },
        "Whether the kernel set in use multiplies bfloat16 pairs in hardware (AVX512_BF16's vdpbf16ps, AMX tiles):\n"
        "where bfloat16 GEMMs run at about twice float32's speed.");
    m.def(
        "set_isa",
        [](const std::string& name) {
            try {
                cpu::set_isa(name);
            } catch (const std::invalid_argument& e) {
                value_error(e.what());
            }
        },
        py::arg("name"),
        "Switch the kernel set ('scalar', 'avx2', 'avx512', 'avx512_vnni', 'avx512_bf16'); ValueError if this CPU "
        "lacks it.");
    m.def(
        "blocking",
        [](const std::string& name) {
            const kernels::KernelSet* ks;
            try {
                ks = name.empty() ? &cpu::active() : &cpu::kernel_set(name);
            } catch (const std::invalid_argument& e) {
                value_error(e.what());
            }
            const auto& b = ks->blocking;
            py::dict d;
            d["mr"] = b.mr;
            d["nr"] = b.nr;
            d["mc"] = b.mc;
            d["kc"] = b.kc;
            d["nc"] = b.nc;
            return d;
        },
        py::arg("name") = "", "GEMM register tile and cache blocking (MR, NR, MC, KC, NC) of a kernel set.");
    m.def(
        "_tune_blocking",
        [](const std::string& name, int mc, int kc, int nc) {
            try {
                cpu::tune_blocking(name, mc, kc, nc);
            } catch (const std::invalid_argument& e) {
                value_error(e.what());
            }
        },
        py::arg("name"), py::arg("mc"), py::arg("kc"), py::arg("nc"),
        "Tuning hook for benchmarks/gym: set MC, KC, NC of a kernel set (repack weights afterwards).");
    m.def("_tune_small_m_packed", &gemm::set_small_m_packed, py::arg("m"),
          "Tuning hook for benchmarks/gym: up to m rows, a prepacked B is read in place (the small-M path).");
    m.def("_tune_epilogue_cols", &gemm::set_epilogue_cols, py::arg("n"),
          "Tuning hook for benchmarks/gym: columns of C the blocked bfloat16 path computes before their epilogue.");
    m.def(
        "_tune_prefetch", [](int64_t bytes) { kernels::stream_prefetch_bytes = bytes; }, py::arg("bytes"),
        "Tuning hook for benchmarks/gym: how far ahead the int8 / 4-bit kernels prefetch weight panels (0: off).");
    m.def(
        "_tune_team_rows", &layers::set_team_rows, py::arg("rows"),
        "Tuning hook for tests and benchmarks/gym: up to this many rows (batch x new tokens, at most 8) decoder_stack\n"
        "runs in one parallel region; 0: always layer by layer.");
    m.def("_tune_team_chunk", &layers::set_team_chunk_bytes, py::arg("bytes"),
          "Tuning hook for benchmarks/gym: bytes of weights per chunk of columns the threads of a decoding step share\n"
          "(-1, the default: by matrix and thread count; 0: 16 KiB, each thread its own share).");
    m.def("get_num_threads", &cpu::num_threads, "Threads used by parallel ops.");
    m.def(
        "set_num_threads",
        [](int n) {
            if (n < 1) value_error("num_threads must be >= 1, got " + std::to_string(n));
            cpu::set_num_threads(n);
        },
        py::arg("n"), "Set the threads used by parallel ops (>= 1).");
    m.def("get_thread_limit", &cpu::thread_limit,
          "The calling thread's cap on the threads of its parallel ops (0: none).");
    m.def(
        "set_thread_limit",
        [](int n) {
            if (n < 0) value_error("thread limit must be >= 0, got " + std::to_string(n));
            cpu::set_thread_limit(n);
        },
        py::arg("n"), "Cap the threads of the parallel ops the calling thread starts (0: no cap).");
    m.def("num_procs", [] { return omp_get_num_procs(); }, "Processors available to this process.");
    m.def(
        "measure_fma_peak",
        [](int threads, double seconds) {
            if (threads < 1) value_error("threads must be >= 1");
            const auto& ks = cpu::active();
            py::gil_scoped_release nogil;
            const int64_t iters = 1 << 20;
            double flops = 0.0;
            const auto t0 = std::chrono::steady_clock::now();
            double elapsed = 0.0;
            while (elapsed < seconds) {
                double f = 0.0;
#pragma omp parallel num_threads(threads) reduction(+ : f)
                f += ks.fma_loop(iters);
                flops += f;
                elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            }
            return flops / elapsed / 1e9;
        },
        py::arg("threads") = 1, py::arg("seconds") = 0.3,
        "Measured FMA throughput in GFLOP/s of the active kernel set on `threads` threads.");
    m.def(
        "measure_read_bandwidth",
        [](int threads, int64_t mbytes, int repeats) {
            if (threads < 1 || mbytes < 1 || repeats < 1) value_error("threads, mbytes and repeats must be >= 1");
            const auto& ks = cpu::active();
            py::gil_scoped_release nogil;
            const int64_t n = mbytes * (1 << 20) / 4;
            AlignedPtr buf = aligned_floats(n);
#pragma omp parallel for num_threads(threads) schedule(static)
            for (int64_t i = 0; i < n; ++i) buf[i] = 1.0f;
            double best = 0.0;
            volatile float sink = 0.0f;
            for (int r = 0; r < repeats; ++r) {
                const auto t0 = std::chrono::steady_clock::now();
                float s = 0.0f;
#pragma omp parallel num_threads(threads) reduction(+ : s)
                {
                    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
                    const int64_t lo = n * t / nt, hi = n * (t + 1) / nt;
                    s += ks.stream_sum(buf.get() + lo, hi - lo);
                }
                sink = s;
                const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
                best = std::max(best, n * 4.0 / dt / 1e9);
            }
            (void)sink;
            return best;
        },
        py::arg("threads") = 1, py::arg("mbytes") = 256, py::arg("repeats") = 5,
        "Measured read bandwidth in GB/s (best of `repeats` sums over a buffer of `mbytes` MiB).");
}

}  // namespace pyattn::bind

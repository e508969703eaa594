// CPU features, the kernel set in use, and the thread count. Everything above cpp/kernels/ asks here
// for "the" kernels; nothing else reads cpuid or PYATTN_ISA.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/kernels.h"

namespace pyattn::cpu {

struct Features {
    bool avx2 = false, fma = false, f16c = false, avx512f = false, avx512dq = false, avx512bw = false, avx512vl = false;
    // reduced-precision instructions (reported; the kernels for them are yet to be written on a machine that has
    // them, see docs/precision.md)
    bool avx_vnni = false, avx512_vnni = false, avx512_bf16 = false, amx_tile = false, amx_int8 = false,
         amx_bf16 = false;
};

const Features& features();

// Whether the Linux kernel granted this process the AMX tile data state (arch_prctl ARCH_REQ_XCOMP_PERM), asked
// once on first call; false on CPUs without AMX and wherever the request is refused.
bool amx_granted();

// Names of the kernel sets this CPU can run, best last ("scalar", "avx2", "avx_vnni", "avx512", "avx512_vnni",
// "avx512_bf16", "amx").
std::vector<std::string> available_isas();
// The test-only kernel sets (set_isa accepts them; never picked) this CPU can run: "amx_emulated", "avx_vnni_evex".
std::vector<std::string> test_isas();

// The active kernel set: chosen at first use from PYATTN_ISA (if set) or the best available one.
const kernels::KernelSet& active();
// Switches the active set. Throws std::invalid_argument for an unknown name or one this CPU lacks.
void set_isa(const std::string& name);
// The set of a given name (same checks as set_isa), without making it active.
const kernels::KernelSet& kernel_set(const std::string& name);

// For tuning only (benchmarks/gym): changes MC, KC, NC of a kernel set. Weights packed before the
// change keep their layout only if KC and NC are unchanged -- repack them.
void tune_blocking(const std::string& name, int mc, int kc, int nc);

// Threads used by every parallel op. Defaults to OMP_NUM_THREADS when set, else the number of cores.
// num_threads() is that, capped by the calling thread's limit if it set one.
int num_threads();
void set_num_threads(int n);  // n >= 1, else std::invalid_argument
// A cap on the threads of the parallel ops this (calling) thread starts, 0 for none: lets several threads run
// models side by side, each with a share of the cores (the server's embedding lanes), without oversubscribing them.
int thread_limit();
void set_thread_limit(int n);  // n >= 0, else std::invalid_argument
// Threads to use for work of `flops` floating-point operations: small ops stay on one thread, where
// waking a team would cost more than it saves.
int threads_for(double flops);

// body(r) for r in [0, n), over nt threads (a static schedule), or in the calling thread without any parallel region
// when nt <= 1: `omp parallel ... if (false)` still enters libgomp, about a microsecond a call, which a decoding step's
// team (layers/decoder_layer.cpp) paid for every norm and RoPE it ran inside its own region (RoPE per head: 17 us a
// layer of SmolLM2, 1 thread, Zen 3).
template <typename Body>
void parallel_rows(int nt, int64_t n, Body&& body) {
    if (nt <= 1) {
        for (int64_t r = 0; r < n; ++r) body(r);
        return;
    }
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t r = 0; r < n; ++r) body(r);
}

}  // namespace pyattn::cpu

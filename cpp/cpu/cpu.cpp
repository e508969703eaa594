#include "cpu/cpu.h"

#include <omp.h>
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <iterator>
#include <mutex>
#include <stdexcept>
#include <thread>

namespace pyattn::cpu {
namespace {

Features detect() {
    Features f;
#if defined(__x86_64__) || defined(_M_X64)
    __builtin_cpu_init();
    // __builtin_cpu_supports also checks that the OS saves the wider registers (XCR0 via xgetbv).
    f.avx2 = __builtin_cpu_supports("avx2");
    f.fma = __builtin_cpu_supports("fma");
    f.avx512f = __builtin_cpu_supports("avx512f");
    f.avx512dq = __builtin_cpu_supports("avx512dq");
    f.avx512bw = __builtin_cpu_supports("avx512bw");
    f.avx512vl = __builtin_cpu_supports("avx512vl");
    f.f16c = __builtin_cpu_supports("f16c");
    f.avx_vnni = __builtin_cpu_supports("avxvnni");
    f.avx512_vnni = __builtin_cpu_supports("avx512vnni");
    f.avx512_bf16 = __builtin_cpu_supports("avx512bf16");
    f.amx_tile = __builtin_cpu_supports("amx-tile");
    f.amx_int8 = __builtin_cpu_supports("amx-int8");
    f.amx_bf16 = __builtin_cpu_supports("amx-bf16");
#endif
    return f;
}

// Every kernel set, best last.
constexpr const char* kIsaNames[] = {"scalar", "avx2", "avx_vnni", "avx512", "avx512_vnni", "avx512_bf16", "amx"};
// Sets for tests only: accepted by set_isa where the CPU can run them, never listed nor picked by default.
// amx_emulated: the amx set's tile loops on software tiles (slow); avx_vnni_evex: the avx_vnni set's kernels in EVEX
// encodings.
constexpr const char* kTestIsaNames[] = {"amx_emulated", "avx_vnni_evex"};

bool can_run(const std::string& isa) {
    const Features& f = features();
    if (isa == "scalar") return true;
#if defined(PYATTN_HAVE_X86_KERNELS)
    if (isa == "avx2") return f.avx2 && f.fma && f.f16c;
    if (isa == "avx512") return f.avx512f && f.avx512dq && f.avx512bw && f.avx512vl && f.avx2 && f.fma && f.f16c;
    if (isa == "avx512_vnni") return can_run("avx512") && f.avx512_vnni;
    if (isa == "avx512_bf16") return can_run("avx512_vnni") && f.avx512_bf16;
    if (isa == "amx_emulated") return can_run("avx512_bf16");
    if (isa == "avx_vnni_evex") return can_run("avx512_vnni");
#if defined(PYATTN_HAVE_AVX_VNNI_KERNELS)
    if (isa == "avx_vnni") return can_run("avx2") && f.avx_vnni;
#endif
#if defined(PYATTN_HAVE_AMX_KERNELS)
    // the tile instructions fault unless Linux granted the tile state (asked here, once)
    if (isa == "amx") return can_run("avx512_bf16") && f.amx_tile && f.amx_bf16 && amx_granted();
#endif
#endif
    (void)f;
    return false;
}

kernels::KernelSet& lookup(const std::string& isa) {
#if defined(PYATTN_HAVE_X86_KERNELS)
    if (isa == "avx2") return kernels::avx2_kernel_set();
    if (isa == "avx512") return kernels::avx512_kernel_set();
    if (isa == "avx512_vnni") return kernels::avx512_vnni_kernel_set();
    if (isa == "avx512_bf16") return kernels::avx512_bf16_kernel_set();
    if (isa == "amx_emulated") return kernels::amx_emulated_kernel_set();
    if (isa == "avx_vnni_evex") return kernels::avx_vnni_evex_kernel_set();
#if defined(PYATTN_HAVE_AVX_VNNI_KERNELS)
    if (isa == "avx_vnni") return kernels::avx_vnni_kernel_set();
#endif
#if defined(PYATTN_HAVE_AMX_KERNELS)
    if (isa == "amx") return kernels::amx_kernel_set();
#endif
#endif
    return kernels::scalar_kernel_set();
}

std::atomic<const kernels::KernelSet*> g_active{nullptr};
std::once_flag g_init;

int default_threads() {
    if (const char* env = std::getenv("OMP_NUM_THREADS")) {
        const int n = std::atoi(env);
        if (n >= 1) return n;
    }
    const int n = omp_get_num_procs();
    return n >= 1 ? n : 1;
}

std::atomic<int> g_threads{0};

void init() {
    std::call_once(g_init, [] {
        const char* env = std::getenv("PYATTN_ISA");
        const std::string wanted = env && *env ? env : available_isas().back();
        // An unusable PYATTN_ISA is reported by the Python layer at import (it calls set_isa with the
        // same value); here we only fall back so that the C++ core stays usable.
        g_active.store(&lookup(can_run(wanted) ? wanted : available_isas().back()));
        g_threads.store(default_threads());
    });
}

}  // namespace

const Features& features() {
    static const Features f = detect();
    return f;
}

bool amx_granted() {
    static const bool granted = [] {
#if defined(__linux__) && (defined(__x86_64__) || defined(_M_X64))
        if (!features().amx_tile) return false;
        constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
        return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
        return false;
#endif
    }();
    return granted;
}

std::vector<std::string> available_isas() {
    std::vector<std::string> out;
    for (const char* isa : kIsaNames)
        if (can_run(isa)) out.emplace_back(isa);
    return out;
}

std::vector<std::string> test_isas() {
    std::vector<std::string> out;
    for (const char* isa : kTestIsaNames)
        if (can_run(isa)) out.emplace_back(isa);
    return out;
}

const kernels::KernelSet& kernel_set(const std::string& name) {
    const auto is = [&](const char* n) { return name == n; };
    if (std::none_of(std::begin(kIsaNames), std::end(kIsaNames), is) &&
        std::none_of(std::begin(kTestIsaNames), std::end(kTestIsaNames), is)) {
        std::string known;
        for (const char* n : kIsaNames) known += (known.empty() ? "" : ", ") + std::string(n);
        throw std::invalid_argument("unknown ISA '" + name + "': expected one of " + known);
    }
    if (!can_run(name)) throw std::invalid_argument("this CPU cannot run the '" + name + "' kernels");
    return lookup(name);
}

const kernels::KernelSet& active() {
    init();
    return *g_active.load(std::memory_order_acquire);
}

void set_isa(const std::string& name) {
    init();
    g_active.store(&kernel_set(name), std::memory_order_release);
}

void tune_blocking(const std::string& name, int mc, int kc, int nc) {
    kernels::KernelSet& ks = const_cast<kernels::KernelSet&>(kernel_set(name));
    const auto& b = ks.blocking;
    if (mc < b.mr || mc % b.mr || kc < 1 || nc < b.nr || nc % b.nr)
        throw std::invalid_argument("blocking must have MC a multiple of MR and NC a multiple of NR");
    ks.blocking.mc = mc;
    ks.blocking.kc = kc;
    ks.blocking.nc = nc;
}

thread_local int t_limit = 0;

int num_threads() {
    init();
    const int n = g_threads.load(std::memory_order_relaxed);
    return t_limit > 0 && t_limit < n ? t_limit : n;
}

int thread_limit() { return t_limit; }

void set_thread_limit(int n) {
    if (n < 0) throw std::invalid_argument("thread limit must be >= 0, got " + std::to_string(n));
    t_limit = n;
}

void set_num_threads(int n) {
    if (n < 1) throw std::invalid_argument("num_threads must be >= 1, got " + std::to_string(n));
    init();
    g_threads.store(n, std::memory_order_relaxed);
}

int threads_for(double flops) {
    const int n = num_threads();
    // Below ~0.2 MFLOP a fork/join costs about as much as the work it would split. Inside a parallel region (a
    // decoding step's team, layers/decoder_layer.cpp) the caller has already split the work: no nested team.
    if (n <= 1 || flops < 2e5 || omp_in_parallel()) return 1;
    return n;
}

}  // namespace pyattn::cpu

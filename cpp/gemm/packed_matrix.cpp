#include "gemm/packed_matrix.h"

#include <omp.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "cpu/cpu.h"
#include "kernels/half.h"

namespace pyattn::gemm {

void pack_b(const kernels::KernelSet& ks, const float* b, int64_t ldb, bool trans, int64_t p0, int64_t kc, int64_t j0,
            int64_t nc, int nr, float* dst, int64_t panel_begin, int64_t panel_end) {
    for (int64_t q = panel_begin; q < panel_end; ++q) {
        float* panel = dst + q * kc * nr;
        const int64_t jq = j0 + q * nr;
        const int64_t w = std::min<int64_t>(nr, j0 + nc - jq);
        if (!trans) {
            for (int64_t p = 0; p < kc; ++p) {
                const float* src = b + (p0 + p) * ldb + jq;
                float* row = panel + p * nr;
                std::memcpy(row, src, w * sizeof(float));
                for (int64_t j = w; j < nr; ++j) row[j] = 0.0f;
            }
        } else {
            ks.pack_bt(b + jq * ldb + p0, ldb, kc, w, nr, panel);
        }
    }
}

void pack_a(const float* a, int64_t lda, int64_t mc, int64_t kc, int mr, float* dst, float scale) {
    constexpr int kMaxMr = 16;
    const float* rows[kMaxMr];
    for (int64_t r = 0; r * mr < mc; ++r) {
        float* panel = dst + r * kc * mr;
        const int64_t m = std::min<int64_t>(mr, mc - r * mr);
        for (int64_t i = 0; i < m; ++i) rows[i] = a + (r * mr + i) * lda;
        // p-outer: each step writes one contiguous MR-float column of the panel; the MR source rows
        // stream in parallel. Missing rows of the last panel are zeros.
        if (m == mr && scale == 1.0f) {
            for (int64_t p = 0; p < kc; ++p)
                for (int i = 0; i < mr; ++i) panel[p * mr + i] = rows[i][p];
        } else {
            for (int64_t p = 0; p < kc; ++p) {
                for (int64_t i = 0; i < m; ++i) panel[p * mr + i] = scale * rows[i][p];
                for (int64_t i = m; i < mr; ++i) panel[p * mr + i] = 0.0f;
            }
        }
    }
}

namespace {

struct Job {
    int64_t jc, pc, nc, kc;
};

// The (jc, pc) blocks of a K x N matrix, and the element count of its packed layout: every full jc block is
// NC wide (a multiple of NR); only the last one is padded to whole panels.
std::vector<Job> block_jobs(const kernels::GemmBlocking& bl, int64_t K, int64_t N, std::size_t& size) {
    const int64_t last_nc = N - ((N - 1) / bl.nc) * bl.nc;
    const int64_t padded_n = N - last_nc + (last_nc + bl.nr - 1) / bl.nr * bl.nr;
    size = static_cast<std::size_t>(padded_n) * static_cast<std::size_t>(K);
    std::vector<Job> jobs;
    for (int64_t jc = 0; jc < N; jc += bl.nc)
        for (int64_t pc = 0; pc < K; pc += bl.kc)
            jobs.push_back({jc, pc, std::min<int64_t>(bl.nc, N - jc), std::min<int64_t>(bl.kc, K - pc)});
    return jobs;
}

}  // namespace

PackedMatrix::PackedMatrix(const float* b, int64_t ldb, bool trans, int64_t K, int64_t N, const kernels::KernelSet& ks)
    : K_(K), N_(N), ks_(&ks) {
    const auto& bl = ks.blocking;
    const int64_t nr = bl.nr;
    const std::vector<Job> jobs = block_jobs(bl, K, N, size_);
    data_ = aligned_floats(size_);
    const int nt = cpu::threads_for(static_cast<double>(K) * N);
    float* base = data_.get();
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) if (nt > 1)
    for (int64_t i = 0; i < static_cast<int64_t>(jobs.size()); ++i) {
        const Job& j = jobs[i];
        const int64_t panels = (j.nc + nr - 1) / nr;
        float* dst = base + j.jc * K + j.pc * panels * nr;
        pack_b(ks, b, ldb, trans, j.pc, j.kc, j.jc, j.nc, static_cast<int>(nr), dst, 0, panels);
    }
}

PackedMatrix::PackedMatrix(const uint16_t* w16, const float* w32, int64_t ldw, int64_t K, int64_t N,
                           const kernels::KernelSet& ks)
    : K_(K), N_(N), ks_(&ks), half_(true) {
    const auto& bl = ks.blocking;
    const int64_t nr = bl.nr;
    const std::vector<Job> jobs = block_jobs(bl, K, N, size_);
    data_ = aligned_floats((size_ + 1) / 2);
    const int nt = cpu::threads_for(static_cast<double>(K) * N);
    uint16_t* base = reinterpret_cast<uint16_t*>(data_.get());
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) if (nt > 1)
    for (int64_t i = 0; i < static_cast<int64_t>(jobs.size()); ++i) {
        const Job& jb = jobs[i];
        const int64_t panels = (jb.nc + nr - 1) / nr;
        for (int64_t q = 0; q < panels; ++q) {
            uint16_t* panel = base + jb.jc * K + jb.pc * panels * nr + q * jb.kc * nr;
            const int64_t j0 = jb.jc + q * nr, w = std::min<int64_t>(nr, N - j0);
            // A cache line of each source row at a time keeps the written corner of the panel in L1.
            for (int64_t pb = 0; pb < jb.kc; pb += 32) {
                const int64_t pe = std::min<int64_t>(pb + 32, jb.kc);
                for (int64_t j = 0; j < w; ++j) {
                    const int64_t src = (j0 + j) * ldw + jb.pc;
                    for (int64_t p = pb; p < pe; ++p)
                        panel[p * nr + j] = w16 ? w16[src + p] : float_to_half(w32[src + p]);
                }
            }
            for (int64_t p = 0; p < jb.kc; ++p)
                for (int64_t j = w; j < nr; ++j) panel[p * nr + j] = 0;
        }
    }
}

void PackedMatrix::unpack_transposed(float* w) const {
    const auto& bl = ks_->blocking;
    for (int64_t jc = 0; jc < N_; jc += bl.nc)
        for (int64_t pc = 0; pc < K_; pc += bl.kc) {
            const int64_t nc = std::min<int64_t>(bl.nc, N_ - jc), kc = std::min<int64_t>(bl.kc, K_ - pc);
            for (int64_t j = 0; j < nc; ++j) {
                const int64_t first = (j / bl.nr) * kc * bl.nr + j % bl.nr;
                float* row = w + (jc + j) * K_ + pc;
                if (half_) {
                    const uint16_t* panel = block_h(jc, pc) + first;
                    for (int64_t p = 0; p < kc; ++p) row[p] = half_to_float(panel[p * bl.nr]);
                } else {
                    const float* panel = block(jc, pc) + first;
                    for (int64_t p = 0; p < kc; ++p) row[p] = panel[p * bl.nr];
                }
            }
        }
}

int64_t PackedMatrix::offset(int64_t jc, int64_t pc) const {
    const auto& bl = ks_->blocking;
    const int64_t nc = std::min<int64_t>(bl.nc, N_ - jc);
    const int64_t panels = (nc + bl.nr - 1) / bl.nr;
    return jc * K_ + pc * panels * bl.nr;
}

const float* PackedMatrix::block(int64_t jc, int64_t pc) const { return data_.get() + offset(jc, pc); }

const uint16_t* PackedMatrix::block_h(int64_t jc, int64_t pc) const {
    return reinterpret_cast<const uint16_t*>(data_.get()) + offset(jc, pc);
}

}  // namespace pyattn::gemm

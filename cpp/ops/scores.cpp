#include "ops/scores.h"

#include <omp.h>

#include <algorithm>

#include "cpu/cpu.h"

namespace pyattn::ops {

void additive_scores(const AdditiveScoresArgs& a) {
    if (a.B == 0 || a.Lq == 0 || a.Lk == 0) return;
    const auto& ks = cpu::active();
    const int64_t rows = a.B * a.Lq;
    // ~25 vector operations per element (tanh is an exp, a division and a few fixups).
    int nt = cpu::threads_for(25.0 * rows * a.Lk * a.H);
    if (omp_in_parallel()) nt = 1;
    // Tasks are (query row, block of keys). Many rows (a batch of decoding steps): one task per row, each
    // streaming its keys once. Few rows (one sentence): the keys are split too, so that every thread works.
    int64_t key_blocks = 1;
    if (rows < 2 * nt) key_blocks = std::min<int64_t>((a.Lk + 7) / 8, (2 * nt + rows - 1) / rows);
    const int64_t block = ((a.Lk + key_blocks - 1) / key_blocks + 3) / 4 * 4;  // whole passes of 4 keys
    key_blocks = (a.Lk + block - 1) / block;
    const int64_t tasks = rows * key_blocks;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (int64_t t = 0; t < tasks; ++t) {
        const int64_t r = t / key_blocks, j0 = t % key_blocks * block, n = std::min(block, a.Lk - j0);
        const int64_t b = r / a.Lq, i = r % a.Lq;
        float* s = a.scores + r * a.Lk + j0;
        ks.tanh_dot(a.qp.data + b * a.qp.sb + i * a.qp.sl, a.kp.data + b * a.kp.sb + j0 * a.kp.sl, a.kp.sl, n, a.v, a.H,
                    s);
        if (a.v_bias != 0.0f)
            for (int64_t j = 0; j < n; ++j) s[j] += a.v_bias;
    }
}

}  // namespace pyattn::ops

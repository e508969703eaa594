#include "ops/topk.h"

#include <cmath>

#include "cpu/cpu.h"

namespace pyattn::ops {
namespace {

// a ranks before b, which came earlier in the row: a greater number, or any number against NaN.
inline bool before(float a, float b) { return a > b || (std::isnan(b) && !std::isnan(a)); }

void topk_row(const float* x, int64_t n, int64_t k, float* v, int64_t* idx) {
    if (k == 0) return;
    int64_t size = 0;
    // Entries arrive in index order, so one that equals a kept value goes after it: ties keep the lower index.
    auto insert = [&](float value, int64_t j) {
        int64_t p = size < k ? size++ : k - 1;  // full: the last one leaves
        for (; p > 0 && before(value, v[p - 1]); --p) {
            v[p] = v[p - 1];
            idx[p] = idx[p - 1];
        }
        v[p] = value;
        idx[p] = j;
    };
    int64_t j = 0;
    for (; j < n && size < k; ++j) insert(x[j], j);
    while (j < n) {
        const float last = v[k - 1];
        if (std::isnan(last)) {  // NaN among the kept: any number enters
            for (; j < n && !(before(x[j], last)); ++j) {
            }
        } else {  // the common case: one comparison per entry
            for (; j < n && !(x[j] > last); ++j) {
            }
        }
        if (j < n) {
            insert(x[j], j);
            ++j;
        }
    }
}

}  // namespace

void topk(const float* x, int64_t ldx, int64_t rows, int64_t n, int64_t k, float* values, int64_t* indices) {
    const int nt = cpu::threads_for(static_cast<double>(rows) * n);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (int64_t r = 0; r < rows; ++r) topk_row(x + r * ldx, n, k, values + r * k, indices + r * k);
}

}  // namespace pyattn::ops

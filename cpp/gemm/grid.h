// How the threads of one GEMM share its output tiles; used by every GEMM driver.
#pragma once
#include <algorithm>
#include <cstdint>

namespace pyattn::gemm {

// Rows [r0, r1) of thread-row `ri` of a grid with `tr` rows: whole MR groups, so only the last may be partial.
inline void grid_rows(int64_t M, int mr, int tr, int ri, int64_t& r0, int64_t& r1) {
    const int64_t row_groups = (M + mr - 1) / mr;
    r0 = std::min<int64_t>(M, row_groups * ri / tr * mr);
    r1 = std::min<int64_t>(M, row_groups * (ri + 1) / tr * mr);
}

// Threads form a tr x tc grid over (rows of C in MR groups) x (NR panels of each NC block), chosen to
// minimise the largest per-thread share of micro-tiles: with few rows (M = 128 on 2 threads) splitting the
// panels balances exactly where splitting rows would leave one thread a partial group short.
struct Grid {
    int tr, tc;
};

inline Grid choose_grid(int nt, int64_t M, int mr, int64_t panels) {
    Grid best{nt, 1};
    int64_t best_cost = -1;
    for (int tr = nt; tr >= 1; --tr) {
        if (nt % tr) continue;
        const int tc = nt / tr;
        // Rows (not row groups) of the busiest thread: a partial last group is cheap through the rows kernel.
        int64_t rows = 0;
        for (int i = 0; i < tr; ++i) {
            int64_t r0, r1;
            grid_rows(M, mr, tr, i, r0, r1);
            rows = std::max(rows, r1 - r0);
        }
        const int64_t cost = rows * ((panels + tc - 1) / tc);
        if (best_cost < 0 || cost < best_cost) {
            best = Grid{tr, tc};
            best_cost = cost;
        }
    }
    return best;
}

}  // namespace pyattn::gemm

#include "ops/rope.h"

#include "cpu/cpu.h"

namespace pyattn::ops {

void rope(float* x, int64_t B, int64_t L, int64_t H, int64_t sb, int64_t sl, int64_t sh, const int64_t* positions,
          const float* cos_table, const float* sin_table, int64_t rot, bool interleaved) {
    const auto& ks = cpu::active();
    const int64_t half = rot / 2, rows = B * L;
    cpu::parallel_rows(cpu::threads_for(6.0 * rows * H * rot), rows, [&](int64_t r) {
        const int64_t b = r / L, l = r % L;
        const float* c = cos_table + positions[r] * half;
        const float* s = sin_table + positions[r] * half;
        for (int64_t h = 0; h < H; ++h) {
            float* v = x + b * sb + l * sl + h * sh;
            if (!interleaved) {
                ks.rotate(v, v + half, c, s, half);
                continue;
            }
            for (int64_t i = 0; i < half; ++i) {  // adjacent pairs: a scalar loop (rot / 2 pairs per head)
                const float a = v[2 * i], e = v[2 * i + 1];
                v[2 * i] = a * c[i] - e * s[i];
                v[2 * i + 1] = a * s[i] + e * c[i];
            }
        }
    });
}

}  // namespace pyattn::ops

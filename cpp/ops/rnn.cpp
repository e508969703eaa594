#include "ops/rnn.h"

#include <algorithm>
#include <cstring>

#include "cpu/buffer.h"
#include "cpu/cpu.h"
#include "gemm/gemm.h"

namespace pyattn::ops {

void gru_sequence(int64_t B, int64_t T, int64_t H, const float* gi, const gemm::PackedMatrix& w_hh, const float* b_hh,
                  float* h, float* out, bool reverse) {
    const auto& ks = w_hh.kernels();
    float* gh = scratch<Slot::gru_hidden>(static_cast<std::size_t>(B) * 3 * H);
    for (int64_t s = 0; s < T; ++s) {
        const int64_t t = reverse ? T - 1 - s : s;
        gemm::sgemm(B, h, H, w_hh, gh, 3 * H, 0.0f, gemm::Epilogue{b_hh, kernels::Activation::none});
        for (int64_t b = 0; b < B; ++b) {
            float* hb = h + b * H;
            ks.gru_gates(gi + (b * T + t) * 3 * H, gh + b * 3 * H, hb, H);
            if (out) std::memcpy(out + (b * T + t) * H, hb, static_cast<std::size_t>(H) * sizeof(float));
        }
    }
}

}  // namespace pyattn::ops

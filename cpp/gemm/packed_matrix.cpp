#include "gemm/packed_matrix.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>
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
    std::size_t size;
    const std::vector<Job> jobs = block_jobs(bl, K, N, size);
    data_ = aligned_floats(size);
    bytes_ = size * sizeof(float);
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

PackedMatrix::PackedMatrix(WeightType type, const float* w32, const uint16_t* w16, int64_t ldw, int64_t K, int64_t N,
                           const kernels::KernelSet& ks)
    : K_(K), N_(N), ks_(&ks), type_(type) {
    switch (info(type).family) {
        case WeightFamily::float32: {
            std::vector<float> widened;
            if (!w32) {  // halves given, float32 wanted: widen once
                widened.resize(static_cast<std::size_t>(N) * ldw);
                ks.half[static_cast<int>(kernels::HalfFormat::f16)].widen(w16, widened.data(),
                                                                          static_cast<int64_t>(widened.size()));
                w32 = widened.data();
            }
            *this = PackedMatrix(w32, ldw, true, K, N, ks);
            return;
        }
        case WeightFamily::wide16:
            pack_wide16(w32, w16, ldw);
            return;
        case WeightFamily::int8:
            pack_int8(w32, w16, ldw);
            return;
        case WeightFamily::block:
            pack_q4(w32, w16, ldw);
            return;
    }
}

uint8_t* PackedMatrix::alloc_q4() {
    const int64_t panels = (N_ + kernels::kQ4Cols - 1) / kernels::kQ4Cols;
    const std::size_t bytes = static_cast<std::size_t>(panels * nblocks() * q4_block_bytes());
    data_ = aligned_floats((bytes + 3) / 4);
    bytes_ = bytes;
    return reinterpret_cast<uint8_t*>(data_.get());
}

namespace {

// Column jj's fifth bits (bit k of weight k) into a panel block's fields (kernels.h).
void put_fifth_bits(uint8_t* blk, int jj, uint32_t bits) {
    for (int k = 0; k < kernels::kQBlock; ++k)
        blk[kernels::q4_fifth_bits() + 4 * jj + k % 4] |=
            static_cast<uint8_t>(((bits >> k) & 1u) << kernels::q4_fifth_field(k % 16 / 4, k / 16));
}

// A block of 32 values u (at most 5 bits) as GGUF stores them: qs, the low 4 bits (value p in the low nibble of byte
// p, p + 16 in its high nibble), and qh, the fifth bits (bit p of value p).
void nibbles_of(const uint8_t* u, uint8_t* qs, uint32_t& qh) {
    qh = 0;
    for (int p = 0; p < 16; ++p) qs[p] = static_cast<uint8_t>((u[p] & 15) | ((u[p + 16] & 15) << 4));
    for (int p = 0; p < kernels::kQBlock; ++p) qh |= static_cast<uint32_t>((u[p] >> 4) & 1) << p;
}

// Writes column jj's values of a block (16 GGUF nibble bytes qs, 5-bit: the fifth bits qh, bit k of weight k) into a
// panel block (kernels.h: Q4Kernels).
void put_values(uint8_t* blk, int jj, const uint8_t* qs, const uint32_t* qh) {
    for (int ch = 0; ch < 4; ++ch) std::memcpy(blk + 32 * ch + 4 * jj, qs + 4 * ch, 4);
    if (qh) put_fifth_bits(blk, jj, *qh);
}

// ... with its half scale d and half minimum m.
void put_q4_column(uint8_t* blk, int jj, const uint8_t* qs, const uint32_t* qh, uint16_t d, uint16_t m, bool has_min) {
    put_values(blk, jj, qs, qh);
    uint16_t* h = reinterpret_cast<uint16_t*>(blk + kernels::q4_halves(qh != nullptr));
    h[jj] = d;
    if (has_min) h[kernels::kQ4Cols + jj] = m;
}

// Column jj's K-quant super-block (u: 256 values in [0, 15] or [0, 31]; the blocks' scales sc and minima m; halves d
// and dmin) into a panel super-block (kernels.h).
void put_qk_column(uint8_t* sup, int jj, bool five, const uint8_t* u, const uint8_t* sc, const uint8_t* m, uint16_t d,
                   uint16_t dmin) {
    for (int b = 0; b < kernels::kQKSuper; ++b) {
        uint8_t qs[16];
        uint32_t qh;
        nibbles_of(u + b * kernels::kQBlock, qs, qh);
        put_values(sup + kernels::q4k_values(five, b), jj, qs, five ? &qh : nullptr);
        sup[kernels::q4k_scales(five, b) + jj] = sc[b];
        sup[kernels::q4k_scales(five, b) + kernels::kQ4Cols + jj] = m[b];
    }
    uint16_t* h = reinterpret_cast<uint16_t*>(sup + kernels::q4k_halves(five));
    h[jj] = d;
    h[kernels::kQ4Cols + jj] = dmin;
}

// A GGUF Q4_K (144 bytes) or Q5_K (176) super-block into column jj of a panel super-block. Both start with half d,
// half dmin and twelve bytes of 6-bit scales and minima (block b < 4: the low six bits of bytes b and b + 4; b >= 4:
// the low and high nibbles of byte b + 4 under the top two bits of bytes b - 4 and b); Q5_K then has 32 bytes qh
// (value l of block b: bit b of qh[l] is its fifth bit); then 128 bytes of nibbles, blocks 2c and 2c + 1 in the low
// and high nibbles of bytes [32 c, 32 c + 32).
void put_gguf_qk_column(uint8_t* sup, int jj, bool five, const uint8_t* raw) {
    uint16_t d, dmin;
    std::memcpy(&d, raw, 2);
    std::memcpy(&dmin, raw + 2, 2);
    const uint8_t* q = raw + 4;
    uint8_t sc[kernels::kQKSuper], m[kernels::kQKSuper], u[kSuperBlock];
    for (int b = 0; b < kernels::kQKSuper; ++b) {
        sc[b] = b < 4 ? q[b] & 63 : static_cast<uint8_t>((q[b + 4] & 15) | ((q[b - 4] >> 6) << 4));
        m[b] = b < 4 ? q[b + 4] & 63 : static_cast<uint8_t>((q[b + 4] >> 4) | ((q[b] >> 6) << 4));
    }
    const uint8_t* qh = raw + 16;
    const uint8_t* qs = raw + (five ? 48 : 16);
    for (int b = 0; b < kernels::kQKSuper; ++b)
        for (int l = 0; l < kernels::kQBlock; ++l) {
            int v = (qs[32 * (b / 2) + l] >> (4 * (b % 2))) & 15;
            if (five) v |= ((qh[l] >> b) & 1) << 4;
            u[b * kernels::kQBlock + l] = static_cast<uint8_t>(v);
        }
    put_qk_column(sup, jj, five, u, sc, m, d, dmin);
}

// The smallest half h with float(h) >= x (x >= 0 and finite; 0x7c00, inf, past the halves' range).
uint16_t half_at_least(float x) {
    uint16_t h = float_to_half(x);
    if (half_to_float(h) < x) ++h;  // positive halves are ordered as their bits
    return h;
}

// Column jj's low-bit super-block (u: 256 values in [0, 3] or [0, 7]; per half-block of 16 its scale byte, Q2_K:
// sc | m << 4, Q3_K: int8 sc; halves d and, Q2_K, dmin) into a panel super-block (kernels.h).
void put_low_column(uint8_t* sup, int jj, bool three, const uint8_t* u, const uint8_t* scales, uint16_t d,
                    uint16_t dmin) {
    for (int b = 0; b < kernels::kQKSuper; ++b) {
        uint8_t* blk = sup + kernels::q2k_values(three, b);
        for (int k = 0; k < kernels::kQBlock; ++k) {
            const int h = k / 16, f = k % 16 / 4, bit = 4 * jj + k % 4, v = u[b * kernels::kQBlock + k];
            blk[32 * h + bit] |= static_cast<uint8_t>((v & 3) << (2 * f));
            if (three && (v & 4))
                blk[kernels::q2k_third_bits() + bit] |= static_cast<uint8_t>(1 << kernels::q2k_third_field(h, f));
        }
        for (int h = 0; h < 2; ++h) sup[kernels::q2k_scales(three, b) + kernels::kQ4Cols * h + jj] = scales[2 * b + h];
    }
    uint16_t* hv = reinterpret_cast<uint16_t*>(sup + kernels::q2k_halves(three));
    hv[jj] = d;
    if (!three) hv[kernels::kQ4Cols + jj] = dmin;
}

// A GGUF Q2_K (84 bytes) or Q3_K (110) super-block into column jj of a panel super-block. Q2_K: 16 scale bytes
// (sub-block i of 16: sc | m << 4, as the panel holds them), 64 bytes qs, half d, half dmin; weight p = 128 n + 32 j +
// l (l < 32) has the bits 2 j, 2 j + 1 of qs[32 n + l]. Q3_K: 32 bytes hmask, 64 bytes qs, 12 bytes of 16 6-bit
// scales, half d; weight p's low two bits as Q2_K's (from qs), its third bit bit 4 n + j of hmask[l]; scale i < 4 is
// the low nibble of byte i under bits 0-1 of byte 8 + i, 4 + i byte 4 + i's low nibble under bits 2-3, 8 + i and
// 12 + i the high nibbles of bytes i and 4 + i under bits 4-5 and 6-7; the sub-scale is the scale - 32.
void put_gguf_low_column(uint8_t* sup, int jj, bool three, const uint8_t* raw) {
    const uint8_t* qs = raw + (three ? 32 : 16);
    uint8_t u[kSuperBlock], scales[16];
    for (int p = 0; p < kSuperBlock; ++p) {
        const int n = p / 128, j = p % 128 / 32, l = p % 32;
        int v = (qs[32 * n + l] >> (2 * j)) & 3;
        if (three) v |= ((raw[l] >> (4 * n + j)) & 1) << 2;
        u[p] = static_cast<uint8_t>(v);
    }
    uint16_t d, dmin = 0;
    if (three) {
        const uint8_t* b = raw + 96;
        for (int i = 0; i < 4; ++i) {
            const int top[4] = {b[8 + i] & 3, (b[8 + i] >> 2) & 3, (b[8 + i] >> 4) & 3, b[8 + i] >> 6};
            const int sc[4] = {(b[i] & 15) | top[0] << 4, (b[4 + i] & 15) | top[1] << 4, (b[i] >> 4) | top[2] << 4,
                               (b[4 + i] >> 4) | top[3] << 4};
            for (int r = 0; r < 4; ++r) scales[4 * r + i] = static_cast<uint8_t>(static_cast<int8_t>(sc[r] - 32));
        }
        std::memcpy(&d, raw + 108, 2);
    } else {
        std::memcpy(scales, raw, 16);
        std::memcpy(&d, raw + 80, 2);
        std::memcpy(&dmin, raw + 82, 2);
    }
    put_low_column(sup, jj, three, u, scales, d, dmin);
}

// pyattn's own rule (not ggml's search) for 256 floats in sub-blocks of n (32: q4_k / q5_k, 16: q2_k) with a scale
// and a minimum each, at most smax (63, or 15 for Q2_K's 4-bit fields), and values u up to top: per sub-block b its
// minimum clamped to at most 0 gives the offset o_b = -min(0, min x) >= 0; dmin = max o_b / smax as a half no
// smaller, m_b = round(o_b / dmin). The range above the offset held, r_b = max(0, max x + dmin m_b) / top, gives
// d = max r_b / smax as a half no smaller and sc_b = ceil(r_b / d) <= smax, so that the step d sc_b is at least r_b
// and the largest element is not clipped; u = round((x + dmin m_b) / (d sc_b)) in [0, top] (0 where d sc_b is 0).
// Every element is within half a step of its value, or of 0 when m_b's rounding put the offset below it (at most
// dmin / 2). A super-block holding NaN or inf gets d NaN.
void quantize_min_super(const float* x, int n, int smax, int top, uint8_t* u, uint8_t* sc, uint8_t* m, uint16_t& dh,
                        uint16_t& dminh) {
    const int nb = kSuperBlock / n;
    std::memset(u, 0, kSuperBlock);
    std::memset(sc, 0, nb);
    std::memset(m, 0, nb);
    float off[16], hi[16], omax = 0.0f;
    for (int b = 0; b < nb; ++b) {
        float lo = 0.0f, h = x[b * n];
        for (int p = b * n; p < (b + 1) * n; ++p) {
            if (!std::isfinite(x[p])) {
                dh = dminh = 0x7e00;  // NaN
                return;
            }
            lo = std::min(lo, x[p]);
            h = std::max(h, x[p]);
        }
        off[b] = -lo;
        hi[b] = h;
        omax = std::max(omax, off[b]);
    }
    const float fmax = static_cast<float>(smax);
    dminh = half_at_least(omax / fmax);
    const float dmin = half_to_float(dminh);
    float r[16], rmax = 0.0f;
    for (int b = 0; b < nb; ++b) {
        m[b] = static_cast<uint8_t>(dmin > 0.0f ? std::min<long>(smax, std::lround(off[b] / dmin)) : 0);
        r[b] = std::max(0.0f, hi[b] + dmin * static_cast<float>(m[b])) / static_cast<float>(top);
        rmax = std::max(rmax, r[b]);
    }
    dh = half_at_least(rmax / fmax);
    const float d = half_to_float(dh);
    for (int b = 0; b < nb; ++b) {
        sc[b] = static_cast<uint8_t>(d > 0.0f ? std::min(fmax, std::ceil(r[b] / d)) : 0.0f);
        const float step = d * static_cast<float>(sc[b]), o = dmin * static_cast<float>(m[b]);
        if (step > 0.0f)
            for (int p = b * n; p < (b + 1) * n; ++p)
                u[p] = static_cast<uint8_t>(std::clamp(static_cast<int>(std::lround((x[p] + o) / step)), 0, top));
    }
}

// pyattn's own symmetric rule for `count` sub-blocks of 16 floats with signed sub-scales (q6_k: 2 per block of 32,
// offset 32, sub-scales up to 127, d rounded to the nearest half; q3_k: 16 per super-block, offset 4, up to 31, d a
// half no smaller): s_b = (the element of largest magnitude) / -offset; d = max |s_b| / smax as a half; sc_b = s_b / d
// rounded away from zero (at most smax in size), so that the step d |sc_b| is at least |s_b| (unless d was rounded
// down, where smax clips it) and the largest element is not clipped; u = round(x / (d sc_b)) + offset in
// [0, 2 offset - 1] (offset where the step is 0): the largest element maps to 0 exactly and the others lie within half
// a step, but those of the other sign beyond offset - 1/2 steps, which take the top value (one step at most). false,
// nothing written, when x holds NaN or inf.
bool quantize_symmetric(const float* x, int count, int offset, int smax, bool round_up, uint8_t* u, int8_t* sc,
                        uint16_t& dh) {
    float sub[16], amax_all = 0.0f;
    for (int b = 0; b < count; ++b) {
        float amax = 0.0f, mx = 0.0f;
        for (int p = 16 * b; p < 16 * b + 16; ++p) {
            if (!std::isfinite(x[p])) return false;
            if (std::fabs(x[p]) > amax) {
                amax = std::fabs(x[p]);
                mx = x[p];
            }
        }
        sub[b] = mx / -static_cast<float>(offset);
        amax_all = std::max(amax_all, std::fabs(sub[b]));
    }
    const float dmax = amax_all / static_cast<float>(smax);
    dh = round_up ? half_at_least(dmax) : float_to_half(dmax);
    const float d = half_to_float(dh);
    for (int b = 0; b < count; ++b) {
        const int mag = d > 0.0f ? std::min(smax, static_cast<int>(std::ceil(std::fabs(sub[b]) / d))) : 0;
        sc[b] = static_cast<int8_t>(sub[b] < 0.0f ? -mag : mag);
        const float step = d * static_cast<float>(sc[b]);
        for (int p = 16 * b; p < 16 * b + 16; ++p)
            u[p] = static_cast<uint8_t>(
                step != 0.0f ? std::clamp(static_cast<int>(std::lround(x[p] / step)) + offset, 0, 2 * offset - 1)
                             : offset);
    }
    return true;
}

// pyattn's own Q3_K rule for 256 floats (quantize_symmetric's). A super-block holding NaN or inf gets d NaN.
// scales: the int8 sub-scales' bytes.
void quantize_q3_super(const float* x, uint8_t* u, uint8_t* scales, uint16_t& dh) {
    std::memset(u, 4, kSuperBlock);
    std::memset(scales, 0, 16);
    if (!quantize_symmetric(x, 16, 4, 31, true, u, reinterpret_cast<int8_t*>(scales), dh)) dh = 0x7e00;  // NaN
}

// One super-block of 256 floats of a K-quant type (q4_k, q5_k, q2_k, q3_k) packed by the rules above into column jj
// of a panel super-block.
void pack_super_column(WeightType type, const float* x, uint8_t* sup, int jj) {
    uint8_t u[kSuperBlock], sc[16], m[16];
    uint16_t d, dmin = 0;
    const bool five = type == WeightType::q5_k;
    switch (type) {
        case WeightType::q3_k:
            quantize_q3_super(x, u, sc, d);
            put_low_column(sup, jj, true, u, sc, d, 0);
            return;
        case WeightType::q2_k:
            quantize_min_super(x, 16, 15, 3, u, sc, m, d, dmin);
            for (int b = 0; b < 16; ++b) sc[b] = static_cast<uint8_t>(sc[b] | m[b] << 4);
            put_low_column(sup, jj, false, u, sc, d, dmin);
            return;
        default:
            quantize_min_super(x, kernels::kQBlock, 63, five ? 31 : 15, u, sc, m, d, dmin);
            put_qk_column(sup, jj, five, u, sc, m, d, dmin);
    }
}

// Column jj's 6-bit block as the q6_k raw block holds it (d, sc_0, sc_1, fifth bits, sixth bits, nibbles) into a
// panel block (kernels.h: the top two bits in their fields).
void put_q6_column(uint8_t* blk, int jj, const uint8_t* raw) {
    uint32_t b5, b6;
    std::memcpy(&b5, raw + 4, 4);
    std::memcpy(&b6, raw + 8, 4);
    for (int ch = 0; ch < 4; ++ch) std::memcpy(blk + 32 * ch + 4 * jj, raw + 12 + 4 * ch, 4);
    for (int k = 0; k < kernels::kQBlock; ++k) {
        const int high = k / 16, ch = k % 16 / 4, top = static_cast<int>(((b5 >> k) & 1u) | ((b6 >> k) & 1u) << 1);
        blk[kernels::q6_high_bits(ch) + 4 * jj + k % 4] |=
            static_cast<uint8_t>(top << (2 * kernels::q6_high_field(ch, high)));
    }
    std::memcpy(blk + kernels::q6_halves() + 2 * jj, raw, 2);
    blk[kernels::q6_scales(0) + jj] = raw[2];
    blk[kernels::q6_scales(1) + jj] = raw[3];
}

// pyattn's own 6-bit rule (quantize_symmetric's) for one block of n <= 32 floats, as a q6_k raw block (the elements
// past n are zeros). A block holding NaN or inf gets d NaN.
void quantize_q6_block(const float* x, int64_t n, uint8_t* raw) {
    float v[kernels::kQBlock] = {};
    std::copy(x, x + n, v);
    std::memset(raw, 0, gguf_block_bytes(WeightType::q6_k));
    uint8_t u[kernels::kQBlock];
    int8_t sc[2];
    uint16_t dh;
    if (!quantize_symmetric(v, 2, 32, 127, false, u, sc, dh)) {
        const uint16_t nan = 0x7e00;
        std::memcpy(raw, &nan, 2);
        return;
    }
    std::memcpy(raw, &dh, 2);
    std::memcpy(raw + 2, sc, 2);
    uint32_t b5, b6 = 0;
    nibbles_of(u, raw + 12, b5);
    for (int p = 0; p < kernels::kQBlock; ++p) b6 |= static_cast<uint32_t>(u[p] >> 5) << p;
    std::memcpy(raw + 4, &b5, 4);
    std::memcpy(raw + 8, &b6, 4);
}

// GGUF's reference quantizers (ggml's quantize_row_q4_0 / q4_1 / q5_0 / q5_1 rules) for one block of n <= 32 floats;
// the elements past n are zeros. A block holding NaN or inf gets a NaN scale. qs: the low 4 bits (weight p in the
// low nibble of byte p, p + 16 in its high nibble), qh: the fifth bits (5-bit only).
void quantize_q4_block(const float* x, int64_t n, bool has_min, bool five, uint8_t* qs, uint32_t& qh, uint16_t& dh,
                       uint16_t& mh) {
    float v[kernels::kQBlock] = {};
    bool finite = true;
    for (int64_t p = 0; p < n; ++p) {
        v[p] = x[p];
        finite = finite && std::isfinite(x[p]);
    }
    uint8_t u[kernels::kQBlock];
    qh = 0;
    if (!finite) {
        dh = mh = 0x7e00;  // NaN
        std::memset(qs, 0, 16);
        return;
    }
    const int top = five ? 31 : 15;  // the largest u
    if (!has_min) {
        float amax = 0.0f, mx = 0.0f;  // mx: the element of largest magnitude, with its sign
        for (int p = 0; p < kernels::kQBlock; ++p)
            if (std::fabs(v[p]) > amax) {
                amax = std::fabs(v[p]);
                mx = v[p];
            }
        const float half = five ? 16.0f : 8.0f;
        const float d = mx / -half, id = d != 0.0f ? 1.0f / d : 0.0f;
        for (int p = 0; p < kernels::kQBlock; ++p)
            u[p] = static_cast<uint8_t>(std::min(top, static_cast<int>(static_cast<int8_t>(v[p] * id + half + 0.5f))));
        dh = float_to_half(d);
        mh = 0;
    } else {
        float lo = v[0], hi = v[0];
        for (int64_t p = 1; p < n; ++p) {
            lo = std::min(lo, v[p]);
            hi = std::max(hi, v[p]);
        }
        const float d = (hi - lo) / static_cast<float>(top), id = d != 0.0f ? 1.0f / d : 0.0f;
        for (int p = 0; p < kernels::kQBlock; ++p)
            u[p] = p < n ? static_cast<uint8_t>(
                               std::min(top, static_cast<int>(static_cast<int8_t>((v[p] - lo) * id + 0.5f))))
                         : 0;
        dh = float_to_half(d);
        mh = float_to_half(lo);
    }
    nibbles_of(u, qs, qh);
}

}  // namespace

PackedMatrix::PackedMatrix(WeightType type, const uint8_t* raw, int64_t K, int64_t N, const kernels::KernelSet& ks)
    : K_(K), N_(N), ks_(&ks), type_(type) {
    if (info(type).family != WeightFamily::block) throw std::invalid_argument("expected a block type (q4_0 ... q5_k)");
    if (K % kernels::kQBlock)
        throw std::invalid_argument("block types need in_features divisible by " + std::to_string(kernels::kQBlock) +
                                    ", got " + std::to_string(K));
    check_super_blocks();
    const bool mn = has_min(), five5 = five();
    const int64_t nb = nblocks(), rb = gguf_block_bytes(type), bs = q4_block_bytes();
    uint8_t* base = alloc_q4();
    std::memset(base, 0, bytes_);
    if (super_blocks()) {
        const int64_t ns = K / kSuperBlock, ss = bs * kernels::kQKSuper, rs = gguf_super_bytes(type);
        for (int64_t j = 0; j < N; ++j)
            for (int64_t s = 0; s < ns; ++s) {
                uint8_t* sup = base + (j / kernels::kQ4Cols) * nb * bs + s * ss;
                const int jj = static_cast<int>(j % kernels::kQ4Cols);
                if (low_bits())
                    put_gguf_low_column(sup, jj, three(), raw + (j * ns + s) * rs);
                else
                    put_gguf_qk_column(sup, jj, five5, raw + (j * ns + s) * rs);
            }
        return;
    }
    for (int64_t j = 0; j < N; ++j) {
        uint8_t* panel = base + (j / kernels::kQ4Cols) * nb * bs;
        for (int64_t blk = 0; blk < nb; ++blk) {
            const uint8_t* src = raw + (j * nb + blk) * rb;  // d, (m), (qh), qs
            if (six()) {
                put_q6_column(panel + blk * bs, static_cast<int>(j % kernels::kQ4Cols), src);
                continue;
            }
            uint16_t d, m = 0;
            uint32_t qh = 0;
            std::memcpy(&d, src, 2);
            if (mn) std::memcpy(&m, src + 2, 2);
            const int64_t at = mn ? 4 : 2;
            if (five5) std::memcpy(&qh, src + at, 4);
            put_q4_column(panel + blk * bs, static_cast<int>(j % kernels::kQ4Cols), src + at + (five5 ? 4 : 0),
                          five5 ? &qh : nullptr, d, m, mn);
        }
    }
}

void PackedMatrix::check_super_blocks() const {
    if (super_blocks() && K_ % kSuperBlock)
        throw std::invalid_argument(std::string(info(type_).name) + " needs in_features divisible by " +
                                    std::to_string(kSuperBlock) + ", got " + std::to_string(K_));
}

void PackedMatrix::pack_q4(const float* w32, const uint16_t* w16, int64_t ldw) {
    check_super_blocks();
    const bool mn = has_min(), five5 = five();
    const int64_t nb = nblocks(), bs = q4_block_bytes(), K = K_;
    uint8_t* base = alloc_q4();
    std::memset(base, 0, bytes_);
    const int nt = cpu::threads_for(static_cast<double>(K_) * N_);
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        std::vector<float> row(K);
#pragma omp for schedule(static)
        for (int64_t j = 0; j < N_; ++j) {
            const float* src = w32 ? w32 + j * ldw : row.data();
            if (!w32) ks_->half[static_cast<int>(kernels::HalfFormat::f16)].widen(w16 + j * ldw, row.data(), K);
            uint8_t* panel = base + (j / kernels::kQ4Cols) * nb * bs;
            if (super_blocks()) {
                for (int64_t s = 0; s < K / kSuperBlock; ++s)
                    pack_super_column(type_, src + s * kSuperBlock, panel + s * bs * kernels::kQKSuper,
                                      static_cast<int>(j % kernels::kQ4Cols));
                continue;
            }
            for (int64_t blk = 0; blk < nb; ++blk) {
                uint8_t qs[16];
                uint32_t qh;
                uint16_t d, m;
                const int64_t p0 = blk * kernels::kQBlock;
                if (six()) {
                    uint8_t block[28];
                    quantize_q6_block(src + p0, std::min<int64_t>(kernels::kQBlock, K - p0), block);
                    put_q6_column(panel + blk * bs, static_cast<int>(j % kernels::kQ4Cols), block);
                    continue;
                }
                quantize_q4_block(src + p0, std::min<int64_t>(kernels::kQBlock, K - p0), mn, five5, qs, qh, d, m);
                put_q4_column(panel + blk * bs, static_cast<int>(j % kernels::kQ4Cols), qs, five5 ? &qh : nullptr, d, m,
                              mn);
            }
        }
    }
}

void PackedMatrix::pack_wide16(const float* w32, const uint16_t* w16, int64_t ldw) {
    const auto& bl = ks_->blocking;
    const int64_t nr = bl.nr, K = K_, N = N_;
    std::size_t size;
    const std::vector<Job> jobs = block_jobs(bl, K, N, size);
    data_ = aligned_floats((size + 1) / 2);
    bytes_ = size * sizeof(uint16_t);
    const int nt = cpu::threads_for(static_cast<double>(K) * N);
    uint16_t* base = reinterpret_cast<uint16_t*>(data_.get());
    const bool bf16 = type_ == WeightType::bf16;
    // The stored element for W[j][p]: halves are kept as they are (float16) or widened and rounded (bfloat16).
    auto element = [&](int64_t src) -> uint16_t {
        if (!bf16) return w16 ? w16[src] : float_to_half(w32[src]);
        return float_to_bf16(w16 ? half_to_float(w16[src]) : w32[src]);
    };
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
                    for (int64_t p = pb; p < pe; ++p) panel[p * nr + j] = element(src + p);
                }
            }
            for (int64_t p = 0; p < jb.kc; ++p)
                for (int64_t j = w; j < nr; ++j) panel[p * nr + j] = 0;
        }
    }
}

void PackedMatrix::alloc_int8() {
    const int64_t nr = ks_->i8.nr, kp = nblocks() * kernels::kQBlock, panels = (N_ + nr - 1) / nr;
    const std::size_t elems = static_cast<std::size_t>(panels * nr) * kp;
    const std::size_t nscales = static_cast<std::size_t>(panels * nr) * nblocks();
    data_ = aligned_floats((elems + 3) / 4);
    scales_ = aligned_floats(nscales);
    bytes_ = elems + nscales * sizeof(float);
}

PackedMatrix::PackedMatrix(const int8_t* q, int64_t ldq, const float* scales, int64_t nscales, int64_t K, int64_t N,
                           const kernels::KernelSet& ks)
    : K_(K), N_(N), ks_(&ks), type_(WeightType::i8) {
    const int64_t nr = ks.i8.nr, nb = nblocks(), kp = nb * kernels::kQBlock, panels = (N + nr - 1) / nr;
    if (nscales != 1 && nscales != nb)
        throw std::invalid_argument("int8 weights need 1 scale per row or 1 per block of " +
                                    std::to_string(kernels::kQBlock) + " (" + std::to_string(nb) + "), got " +
                                    std::to_string(nscales));
    alloc_int8();
    int8_t* base = reinterpret_cast<int8_t*>(data_.get());
    for (int64_t pq = 0; pq < panels; ++pq) {
        int8_t* panel = base + pq * kp * nr;
        float* ps = scales_.get() + pq * nb * nr;
        for (int64_t jj = 0; jj < nr; ++jj) {
            const int64_t j = pq * nr + jj;
            for (int64_t p = 0; p < kp; ++p)
                panel[int8_offset(p, jj, nr, ks.i8.kgroup)] = j < N && p < K ? q[j * ldq + p] : int8_t{0};
            for (int64_t blk = 0; blk < nb; ++blk)
                ps[blk * nr + jj] = j < N ? scales[j * nscales + (nscales == 1 ? 0 : blk)] : 0.0f;
        }
    }
}

void PackedMatrix::pack_int8(const float* w32, const uint16_t* w16, int64_t ldw) {
    const auto& k8 = ks_->i8;
    const int64_t nr = k8.nr, nb = nblocks(), kp = nb * kernels::kQBlock, panels = (N_ + nr - 1) / nr;
    alloc_int8();
    int8_t* base = reinterpret_cast<int8_t*>(data_.get());
    const int nt = cpu::threads_for(static_cast<double>(K_) * N_);
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        std::vector<int16_t> q(kp);
        std::vector<float> row(w32 ? 0 : K_), rs(nb);
#pragma omp for schedule(static)
        for (int64_t pq = 0; pq < panels; ++pq) {
            int8_t* panel = base + pq * kp * nr;
            float* ps = scales_.get() + pq * nb * nr;
            for (int64_t jj = 0; jj < nr; ++jj) {
                const int64_t j = pq * nr + jj;
                if (j < N_) {
                    // the activations' quantizer, so that weights and activations follow one rule
                    const float* src = w32 ? w32 + j * ldw : row.data();
                    if (!w32)
                        ks_->half[static_cast<int>(kernels::HalfFormat::f16)].widen(w16 + j * ldw, row.data(), K_);
                    k8.quantize(src, ldw, 1, K_, q.data(), kp, rs.data(), nb);
                } else {
                    std::fill(q.begin(), q.end(), int16_t{0});
                    std::fill(rs.begin(), rs.end(), 0.0f);
                }
                for (int64_t p = 0; p < kp; ++p) panel[int8_offset(p, jj, nr, k8.kgroup)] = static_cast<int8_t>(q[p]);
                for (int64_t blk = 0; blk < nb; ++blk) ps[blk * nr + jj] = rs[blk];
            }
        }
    }
}

void PackedMatrix::unpack_row(int64_t j, float* row) const {
    if (info(type_).family == WeightFamily::block) {
        const bool mn = has_min(), five5 = five();
        const int64_t bs = q4_block_bytes();
        const uint8_t* panel = panel_q4(j / kernels::kQ4Cols);
        const int jj = static_cast<int>(j % kernels::kQ4Cols);
        if (low_bits()) {
            const int64_t ss = bs * kernels::kQKSuper;
            const bool three3 = three();
            for (int64_t p = 0; p < K_; ++p) {
                const uint8_t* sup = panel + p / kSuperBlock * ss;
                const int b = static_cast<int>(p % kSuperBlock / kernels::kQBlock), k = static_cast<int>(p % 32);
                const int u = kernels::low_value(sup + kernels::q2k_values(three3, b), jj, k, info(type_).bits);
                const uint8_t sc = sup[kernels::q2k_scales(three3, b) + kernels::kQ4Cols * (k / 16) + jj];
                const uint16_t* h = reinterpret_cast<const uint16_t*>(sup + kernels::q2k_halves(three3));
                const float d = half_to_float(h[jj]);
                if (three3)  // exact: 11 x 8 bits
                    row[p] = d * static_cast<float>(static_cast<int8_t>(sc) * (u - 4));
                else  // d sc u and dmin m exact, one rounding
                    row[p] = d * static_cast<float>((sc & 15) * u) -
                             half_to_float(h[kernels::kQ4Cols + jj]) * static_cast<float>(sc >> 4);
            }
            return;
        }
        if (super_blocks()) {
            const int64_t ss = kernels::q4k_super_bytes(five5);
            for (int64_t p = 0; p < K_; ++p) {
                const uint8_t* sup = panel + p / kSuperBlock * ss;
                const int b = static_cast<int>(p % kSuperBlock / kernels::kQBlock);
                const int u = kernels::block_value(sup + kernels::q4k_values(five5, b), jj,
                                                   static_cast<int>(p % kernels::kQBlock), info(type_).bits);
                const uint16_t* h = reinterpret_cast<const uint16_t*>(sup + kernels::q4k_halves(five5));
                const uint8_t* sc = sup + kernels::q4k_scales(five5, b);
                const float ds = half_to_float(h[jj]) * static_cast<float>(sc[jj]);  // exact: 11 x 6 bits
                const float dm =
                    half_to_float(h[kernels::kQ4Cols + jj]) * static_cast<float>(sc[kernels::kQ4Cols + jj]);
                row[p] = ds * static_cast<float>(u) - dm;  // one rounding: ds u is exact
            }
            return;
        }
        for (int64_t p = 0; p < K_; ++p) {
            const uint8_t* blk = panel + (p / kernels::kQBlock) * bs;
            const int k = static_cast<int>(p % kernels::kQBlock);
            const int u = kernels::block_value(blk, jj, k, info(type_).bits);
            if (six()) {
                const int sc = static_cast<int8_t>(blk[kernels::q6_scales(k < 16 ? 0 : 1) + jj]);
                const uint16_t* h = reinterpret_cast<const uint16_t*>(blk + kernels::q6_halves());
                row[p] = half_to_float(h[jj]) * static_cast<float>(sc * (u - 32));  // exact: 11 x 13 bits
                continue;
            }
            const uint16_t* h = reinterpret_cast<const uint16_t*>(blk + kernels::q4_halves(five5));
            const float d = half_to_float(h[jj]);
            row[p] = mn ? d * static_cast<float>(u) + half_to_float(h[kernels::kQ4Cols + jj])
                        : d * static_cast<float>(u - (five5 ? 16 : 8));
        }
        return;
    }
    if (type_ == WeightType::i8) {
        const int64_t nr = ks_->i8.nr, jj = j % nr;
        const int8_t* panel = panel_i8(j / nr);
        const float* ps = panel_scales(j / nr);
        for (int64_t p = 0; p < K_; ++p)
            row[p] = static_cast<float>(panel[int8_offset(p, jj, nr, ks_->i8.kgroup)]) *
                     ps[(p / kernels::kQBlock) * nr + jj];
        if (!in_scale_.empty())
            for (int64_t p = 0; p < K_; ++p) row[p] *= in_scale_[p];
        return;
    }
    const auto& bl = ks_->blocking;
    const bool bf16 = type_ == WeightType::bf16;
    const int64_t jc = j / bl.nc * bl.nc, jj = j - jc;
    for (int64_t pc = 0; pc < K_; pc += bl.kc) {
        const int64_t kc = std::min<int64_t>(bl.kc, K_ - pc);
        const int64_t first = (jj / bl.nr) * kc * bl.nr + jj % bl.nr;
        if (type_ != WeightType::f32) {
            const uint16_t* panel = block16(jc, pc) + first;
            for (int64_t p = 0; p < kc; ++p)
                row[pc + p] = bf16 ? bf16_to_float(panel[p * bl.nr]) : half_to_float(panel[p * bl.nr]);
        } else {
            const float* panel = block(jc, pc) + first;
            for (int64_t p = 0; p < kc; ++p) row[pc + p] = panel[p * bl.nr];
        }
    }
}

void PackedMatrix::set_input_scale(const float* a) {
    if (type_ != WeightType::i8) throw std::invalid_argument("an input scale needs an int8 weight");
    check_input_scale(a, K_);
    in_scale_.assign(a, a + K_);
}

void PackedMatrix::check_input_scale(const float* a, int64_t K) {
    for (int64_t p = 0; p < K; ++p)
        if (!(a[p] > 0.0f && a[p] <= 3.40282347e38f))
            throw std::invalid_argument("input_scale must be positive and finite (index " + std::to_string(p) + ")");
}

void PackedMatrix::unpack_transposed(float* w) const {
    for (int64_t j = 0; j < N_; ++j) unpack_row(j, w + j * K_);
}

int64_t PackedMatrix::offset(int64_t jc, int64_t pc) const {
    const auto& bl = ks_->blocking;
    const int64_t nc = std::min<int64_t>(bl.nc, N_ - jc);
    const int64_t panels = (nc + bl.nr - 1) / bl.nr;
    return jc * K_ + pc * panels * bl.nr;
}

const float* PackedMatrix::block(int64_t jc, int64_t pc) const { return data_.get() + offset(jc, pc); }

const uint16_t* PackedMatrix::block16(int64_t jc, int64_t pc) const {
    return reinterpret_cast<const uint16_t*>(data_.get()) + offset(jc, pc);
}

}  // namespace pyattn::gemm

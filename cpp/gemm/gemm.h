// SGEMM in the Goto / BLIS layering: C = act(A B + beta C + bias).
//
//   for jc in N step NC:            B block KC x NC (packed, L3)
//     for pc in K step KC:
//       for ic in M step MC:        A block MC x KC (packed, L2), one per thread
//         for jr in NC step NR:     B micro-panel KC x NR (L1)
//           for ir in MC step MR:   micro-kernel: MR x NR register tile
//
// The driver is ISA-free: MR/NR/MC/KC/NC and the micro-kernel come from the active KernelSet.
// Threads split (MC block, NR panel range) tasks; B is packed cooperatively (or was prepacked once,
// see PackedMatrix). M <= kSmallM (decoding) skips packing entirely: the work is a GEMV, bounded by the
// rate at which B streams from memory.
#pragma once
#include <cstdint>

#include "kernels/kernels.h"

namespace pyattn::gemm {

class PackedMatrix;

// B operand of a GEMM: element (p, j) of the K x N matrix is data[p * ld + j], or data[j * ld + p] when
// trans (B given as N x K, e.g. a weight in [out, in] layout).
struct BRef {
    const float* data;
    int64_t ld;
    bool trans;
};

struct Epilogue {
    const float* bias = nullptr;  // N floats, added to every row
    kernels::Activation act = kernels::Activation::none;
};

constexpr int64_t kSmallM = 8;
// Up to this many rows (default 64) a prepacked 16-bit B is read in place by the small-M path, widened in registers,
// instead of the blocked path's widening of each block into a float buffer: measured 1.1x (64 rows) to 1.56x (9)
// faster on Zen 3, 1 thread, interleaved (a prepacked float32 B gains nothing: it keeps kSmallM). Tunable for
// benchmarks/gym (_core._tune_small_m_packed).
int64_t small_m_packed();
void set_small_m_packed(int64_t m);
// Columns of C (default 128) that the blocked bfloat16 path computes before applying their bias and activation, so
// that the block is still in L2 when the epilogue reads it back. Tunable for benchmarks/gym
// (_core._tune_epilogue_cols).
int64_t epilogue_cols();
void set_epilogue_cols(int64_t n);

// C (M x N, row stride ldc) = act(A (M x K, row stride lda) B + beta C + bias).
// nthreads = 0: choose from the active thread count and the size of the work.
void sgemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, BRef B, float* C, int64_t ldc,
           float beta = 0.0f, const Epilogue& ep = {}, int nthreads = 0);

void sgemm(int64_t M, const float* A, int64_t lda, const PackedMatrix& B, float* C, int64_t ldc, float beta = 0.0f,
           const Epilogue& ep = {}, int nthreads = 0);

// The same for an int8 PackedMatrix (sgemm above dispatches to it): the activations are quantized per row to
// int8, products summed in int32 and dequantized with the row and column scales (Int8Kernels in kernels.h).
void gemm_int8(int64_t M, const float* A, int64_t lda, const PackedMatrix& B, float* C, int64_t ldc, float beta,
               const Epilogue& ep, int nthreads);

// A (m x K, row stride lda) times B's input scale, if it has one, into this thread's scratch (ld = K); else A
// itself (ld = lda). The int8 drivers quantize what it returns.
const float* scaled_input(const PackedMatrix& B, const float* A, int64_t lda, int64_t m, int64_t& ld);

// The same for a 4-bit block PackedMatrix (q4_0, q4_1): activations quantized per block of 32 to int8, the weights'
// nibbles read as stored (Q4Kernels in kernels.h).
void gemm_q4(int64_t M, const float* A, int64_t lda, const PackedMatrix& B, float* C, int64_t ldc, float beta,
             const Epilogue& ep, int nthreads);

// Output columns [col0, col1) of the product of a few rows (M <= kSmallM) with a packed B of any weight type,
// computed by the calling thread alone: for a caller that runs a whole decoding step in one parallel region
// (layers/decoder_layer.cpp) and shares each product's columns over its team itself, instead of a fork and join per
// product. In two steps, for a thread that computes several column ranges of one product: ColsInput holds A's rows
// made ready for B once (quantized for int8 and 4-bit B, times B's input scale if it has one; as pairs or rounded
// for bfloat16), in this thread's scratch, valid until the thread's next ColsInput. Columns beyond [col0, col1) are
// not written, so threads may share a panel at their boundary (it is computed twice); chunks of chunk_cols(B, ...)
// avoid that. The epilogue's bias and activation apply to the range.
struct ColsInput {
    int64_t M = 0;
    const float* A = nullptr;  // the rows (float32 / float16 B; bfloat16 B: rounded)
    int64_t lda = 0;
    const void* q = nullptr;  // int8 / 4-bit B: the quantized rows (kp per row), their block scales and sums
    const float* sa = nullptr;
    const int32_t* ta = nullptr;
    int64_t kp = 0;
    const uint32_t* a2 = nullptr;  // bfloat16 B on a CPU with the pair rows kernel: the rows as pairs
    int64_t lda2 = 0;
};
ColsInput cols_input(int64_t M, const float* A, int64_t lda, const PackedMatrix& B);
void gemm_cols(const ColsInput& in, const PackedMatrix& B, float* C, int64_t ldc, float beta, const Epilogue& ep,
               int64_t col0, int64_t col1);
// Whole panels of B's kernel holding about `bytes` of weights (at least one panel): a chunk of columns for threads
// that share a product's columns.
int64_t chunk_cols(const PackedMatrix& B, int64_t bytes);

// A batch of GEMMs sharing M, N, K and strides: C_i = A_i B_i with A_i = A + a_off[i], B_i = B.data +
// b_off[i], C_i = C + i * c_stride. Many small products run one per thread; large ones one at a time
// with every thread inside.
void sgemm_batched(int64_t batch, int64_t M, int64_t N, int64_t K, const float* A, const int64_t* a_off, int64_t lda,
                   BRef B, const int64_t* b_off, float* C, int64_t c_stride, int64_t ldc);

}  // namespace pyattn::gemm

// The LFQ entropy regulariser of one bit group (quantize/lfq/entropy.rs) without the rows x 2^w probability matrix.
//
// Logits against the implicit codebook are l_c = sum_k c_k a_k with a_k = 2 r_k / tau and c_k = +-1. The softmax
// normaliser factorises over bits: log Z = max_c l_c + sum_k log1p(exp(-2|a_k|)) with max_c l_c = sum_k |a_k|, so
// log p_c = sum_k (c_k a_k - |a_k|) - sum_k log1p(exp(-2|a_k|)) is computed per code on the fly. Each code's
// probability is needed (MDQ clamps p at 1e-5 inside the log, which breaks the per-bit factorisation of the
// entropy), but never stored: only the 2^w column means are, for the average entropy.
//
// Arithmetic is f64 throughout (the H100/H200 have the f64 units to spare at these sizes): the result then equals
// the f64 CPU reference (quantize/lfq/fused.rs) to rounding, and is more accurate than the f32 composite.

#include <stdint.h>

#define LOG_CLAMP 1e-5
#define TILE_ROWS 32
#define MAX_WIDTH 16

// One block of codes x one chunk of rows: accumulates each code's column sum of p into col_sum (2^w) and
// sum_rows sum_c p log max(p, 1e-5) into *plogp.
extern "C" __global__ void lfq_entropy_forward(const float* __restrict__ r, double* __restrict__ col_sum,
                                               double* __restrict__ plogp, uint32_t rows, uint32_t width,
                                               uint32_t rows_per_chunk, double inv_tau) {
  __shared__ double a[TILE_ROWS][MAX_WIDTH];
  __shared__ double base[TILE_ROWS];
  __shared__ double warp_sums[32];
  const uint32_t codes = 1u << width;
  const uint32_t c = blockIdx.x * blockDim.x + threadIdx.x;
  const uint32_t first = blockIdx.y * rows_per_chunk;
  const uint32_t last = min(rows, first + rows_per_chunk);
  double m = 0.0, s = 0.0;
  for (uint32_t t0 = first; t0 < last; t0 += TILE_ROWS) {
    const uint32_t n = min(TILE_ROWS, last - t0);
    __syncthreads();
    for (uint32_t j = threadIdx.x; j < n * width; j += blockDim.x) {
      a[j / width][j % width] = 2.0 * static_cast<double>(r[static_cast<uint64_t>(t0 + j / width) * width + j % width]) * inv_tau;
    }
    __syncthreads();
    if (threadIdx.x < n) {
      double b = 0.0;
      for (uint32_t k = 0; k < width; ++k) {
        const double x = fabs(a[threadIdx.x][k]);
        b -= x + log1p(exp(-2.0 * x));
      }
      base[threadIdx.x] = b;
    }
    __syncthreads();
    if (c < codes) {
      for (uint32_t t = 0; t < n; ++t) {
        double lp = base[t];
        for (uint32_t k = 0; k < width; ++k) lp += ((c >> k) & 1u) ? a[t][k] : -a[t][k];
        const double p = exp(lp);
        m += p;
        s += p * log(fmax(p, LOG_CLAMP));
      }
    }
  }
  if (c < codes) atomicAdd(&col_sum[c], m);
  for (int o = 16; o > 0; o >>= 1) s += __shfl_down_sync(0xffffffffu, s, o);
  if ((threadIdx.x & 31u) == 0) warp_sums[threadIdx.x >> 5] = s;
  __syncthreads();
  if (threadIdx.x == 0) {
    double total = 0.0;
    for (uint32_t w = 0; w < (blockDim.x + 31) / 32; ++w) total += warp_sums[w];
    atomicAdd(plogp, total);
  }
}

// One block: out[0] = per-sample entropy -plogp / rows, out[1] = average entropy -sum_c m_c log max(m_c, 1e-5)
// with m_c = col_sum[c] / rows; also turns col_sum into h_c = d(m log max(m, eps))/dm for the backward pass.
extern "C" __global__ void lfq_entropy_finish(double* __restrict__ col_sum, const double* __restrict__ plogp,
                                              float* __restrict__ out, uint32_t rows, uint32_t width) {
  __shared__ double warp_sums[32];
  const uint32_t codes = 1u << width;
  double acc = 0.0;
  for (uint32_t c = threadIdx.x; c < codes; c += blockDim.x) {
    const double m = col_sum[c] / rows;
    acc += m * log(fmax(m, LOG_CLAMP));
    col_sum[c] = m > LOG_CLAMP ? log(m) + 1.0 : log(LOG_CLAMP);
  }
  for (int o = 16; o > 0; o >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, o);
  if ((threadIdx.x & 31u) == 0) warp_sums[threadIdx.x >> 5] = acc;
  __syncthreads();
  if (threadIdx.x == 0) {
    double total = 0.0;
    for (uint32_t w = 0; w < (blockDim.x + 31) / 32; ++w) total += warp_sums[w];
    out[0] = static_cast<float>(-*plogp / rows);
    out[1] = static_cast<float>(-total);
  }
}

__device__ __forceinline__ double warp_sum(double v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// One warp per row. With S = -(1/R) sum_rows sum_c p log max(p, eps) and A = -sum_c m_c log max(m_c, eps):
//   dS/dl_c = -(1/R) p_c (f(p_c) - sum_j p_j f(p_j)),  f(p) = log max(p, eps) + [p > eps]
//   dA/dl_c = -(1/R) p_c (h_c - sum_j p_j h_j),        h = f at m (from lfq_entropy_finish)
// and dl_c/dr_k = 2 c_k / tau. grad = (dS, dA) weights from the two outputs' incoming gradients.
extern "C" __global__ void lfq_entropy_backward(const float* __restrict__ r, const double* __restrict__ h,
                                                const float* __restrict__ grad, float* __restrict__ dr,
                                                uint32_t rows, uint32_t width, double inv_tau) {
  const uint32_t lane = threadIdx.x & 31u;
  const uint64_t row = (static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  if (row >= rows) return;  // whole warps leave together: blockDim is a multiple of 32
  const uint32_t codes = 1u << width;
  double a[MAX_WIDTH];
  double base = 0.0;
  for (uint32_t k = 0; k < width; ++k) {
    a[k] = 2.0 * static_cast<double>(r[row * width + k]) * inv_tau;
    const double x = fabs(a[k]);
    base -= x + log1p(exp(-2.0 * x));
  }
  double pf = 0.0, ph = 0.0;
  for (uint32_t c = lane; c < codes; c += 32) {
    double lp = base;
    for (uint32_t k = 0; k < width; ++k) lp += ((c >> k) & 1u) ? a[k] : -a[k];
    const double p = exp(lp);
    pf += p * (log(fmax(p, LOG_CLAMP)) + (p > LOG_CLAMP ? 1.0 : 0.0));
    ph += p * h[c];
  }
  pf = warp_sum(pf);
  ph = warp_sum(ph);
  const double gs = grad[0], ga = grad[1];
  double g[MAX_WIDTH];
  for (uint32_t k = 0; k < width; ++k) g[k] = 0.0;
  for (uint32_t c = lane; c < codes; c += 32) {
    double lp = base;
    for (uint32_t k = 0; k < width; ++k) lp += ((c >> k) & 1u) ? a[k] : -a[k];
    const double p = exp(lp);
    const double f = log(fmax(p, LOG_CLAMP)) + (p > LOG_CLAMP ? 1.0 : 0.0);
    const double dl = p * (gs * (f - pf) + ga * (h[c] - ph));
    for (uint32_t k = 0; k < width; ++k) g[k] += ((c >> k) & 1u) ? dl : -dl;
  }
  const double scale = -2.0 * inv_tau / rows;
  for (uint32_t k = 0; k < width; ++k) {
    const double v = warp_sum(g[k]);
    if (lane == 0) dr[row * width + k] = static_cast<float>(v * scale);
  }
}

// Multi-depth residual LFQ on the GPU: every depth of a token in one pass over z, and the decoder's inverse.
// Mirrors quantize/lfq/codes.rs operation for operation (same f32 additions in the same order, no multiply, so no
// FMA contraction can change a bit): tokens and cum are bit-identical to the CPU path.
//
// Layout: z and cum are rows x bits (channels-last), bits <= 32. A warp holds 32 / bits whole rows, one channel per
// lane, so a warp vote (__ballot_sync) yields each row's sign pattern: lane k of a row sets bit k, which is the
// LSB-first token id directly. Loads and stores are contiguous across the warp.

#include <stdint.h>

// 2^-s as its bit pattern: exact for s < 127, and the library's powf could round on some architectures.
__device__ __forceinline__ float depth_scale(int s) { return __int_as_float((127 - s) << 23); }

// +scale when bit is 1, -scale when 0, as codes.rs's `signed`.
__device__ __forceinline__ float signed_scale(float scale, unsigned bit) {
  return __int_as_float(__float_as_int(scale) | ((bit ^ 1u) << 31));
}

// residuals (optional, depths x rows x bits): r_s = z - cum before depth s, the quantity the losses differentiate.
// q (optional, depths x rows x bits): the code of depth s scaled by 2^-s. Inference passes null for both.
extern "C" __global__ void lfq_quantize_f32(const float* __restrict__ z, float* __restrict__ cum,
                                            uint32_t* __restrict__ tokens, float* __restrict__ residuals,
                                            float* __restrict__ q, uint32_t rows, uint32_t bits, uint32_t depths) {
  const uint32_t lane = threadIdx.x & 31u;
  const uint32_t per_warp = 32u / bits;
  const uint32_t slot = lane / bits;  // which row of the warp's rows
  const uint32_t k = lane % bits;     // channel
  const uint64_t warp = (static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const uint64_t row = warp * per_warp + slot;
  const bool active = slot < per_warp && row < rows;
  const uint64_t i = row * bits + k;
  const uint64_t plane = static_cast<uint64_t>(rows) * bits;
  const float zk = active ? z[i] : 0.0f;
  float c = 0.0f;
  const uint32_t row_mask = bits == 32 ? 0xffffffffu : ((1u << bits) - 1u);
  for (uint32_t s = 0; s < depths; ++s) {
    const float r = zk - c;
    // r = 0 and NaN count as negative (MDQ's `z > 0` mask).
    const unsigned bit = active && r > 0.0f;
    const uint32_t vote = __ballot_sync(0xffffffffu, bit);
    const float code = signed_scale(depth_scale(static_cast<int>(s)), bit);
    if (active) {
      if (residuals) residuals[s * plane + i] = r;
      if (q) q[s * plane + i] = code;
      if (k == 0) tokens[row * depths + s] = (vote >> (slot * bits)) & row_mask;
    }
    c += code;
  }
  if (active) cum[i] = c;
}

// cum_d from tokens (rows x stride, depth fastest), as codes.rs's cum_from_tokens, with the range check done here:
// the smallest flat index of a token >= 2^bits among the decoded depths goes to *bad (initialised to UINT32_MAX
// by the caller), so the host reads back one number instead of the ids.
extern "C" __global__ void lfq_decode_u32(const uint32_t* __restrict__ tokens, float* __restrict__ cum,
                                          uint32_t* __restrict__ bad, uint32_t rows, uint32_t bits,
                                          uint32_t stride, uint32_t depths) {
  const uint64_t i = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= static_cast<uint64_t>(rows) * bits) return;
  const uint64_t row = i / bits;
  const uint32_t k = static_cast<uint32_t>(i % bits);
  float c = 0.0f;
  for (uint32_t s = 0; s < depths; ++s) {
    const uint64_t at = row * stride + s;
    const uint32_t id = tokens[at];
    if (k == 0 && bits < 32 && (id >> bits) != 0) atomicMin(bad, static_cast<uint32_t>(at));
    c += signed_scale(depth_scale(static_cast<int>(s)), (id >> k) & 1u);
  }
  cum[i] = c;
}

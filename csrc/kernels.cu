// CUDA kernels of one fused optimizer step: the same tables, order of operations and results as
// fusedlr/_triton/kernels.py (read that file's header for the step's shape). Templated on the
// storage type of a bucket; maths in float (double for double storage); IEEE division and
// square root (no fast math); deterministic reductions (fixed trees, no atomics); 16-byte
// vector loads where every pointer of a chunk is aligned, scalar loads otherwise.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "kernels.h"
#include "layout.h"

namespace fusedlr {
namespace {

constexpr int kThreads = 256;
constexpr int kFinalizeThreads = 256;
constexpr double kNormEps = 1e-6;

void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    throw std::runtime_error(std::string("fusedlr CUDA error in ") + what + ": " + cudaGetErrorString(status));
  }
}

int sm_count() {
  int device = 0, count = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  check(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute");
  return count;
}

int chunk_grid(int64_t chunk_count) {
  const int64_t cap = static_cast<int64_t>(sm_count()) * 8;
  return static_cast<int>(chunk_count < cap ? chunk_count : cap);
}

// ----- storage types --------------------------------------------------------------------------

template <typename T> struct Storage;
template <> struct Storage<float> {
  using Acc = float;
  __device__ static float load(float x) { return x; }
  __device__ static float store(float x) { return x; }
};
template <> struct Storage<double> {
  using Acc = double;
  __device__ static double load(double x) { return x; }
  __device__ static double store(double x) { return x; }
};
template <> struct Storage<__half> {
  using Acc = float;
  __device__ static float load(__half x) { return __half2float(x); }
  __device__ static __half store(float x) { return __float2half_rn(x); }
};
template <> struct Storage<__nv_bfloat16> {
  using Acc = float;
  __device__ static float load(__nv_bfloat16 x) { return __bfloat162float(x); }
  __device__ static __nv_bfloat16 store(float x) { return __float2bfloat16_rn(x); }
};

// 16 bytes of T: one vector load or store.
template <typename T> struct alignas(16) Pack {
  static constexpr int N = 16 / sizeof(T);
  T v[N];
};

template <typename T> __device__ T* address(const int64_t* table, int column, int64_t num_tensors, int64_t t) {
  return reinterpret_cast<T*>(static_cast<uintptr_t>(table[column * num_tensors + t]));
}

__device__ bool skipped(const float* found_inf) { return found_inf != nullptr && *found_inf != 0.0f; }

// Sum over the block in a fixed tree: bitwise the same every run.
__device__ double block_sum(double value, double* shared) {
  shared[threadIdx.x] = value;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) shared[threadIdx.x] += shared[threadIdx.x + stride];
    __syncthreads();
  }
  double total = shared[0];
  __syncthreads();
  return total;
}

struct Chunk {
  int64_t tensor, start, length;
};

__device__ Chunk chunk_at(const int64_t* tensor_table, int64_t num_tensors, const int64_t* chunk_table,
                          int64_t num_chunks, int64_t c, int64_t chunk_size) {
  Chunk chunk;
  chunk.tensor = chunk_table[c];
  chunk.start = chunk_table[num_chunks + c];
  const int64_t remaining = tensor_table[kNumel * num_tensors + chunk.tensor] - chunk.start;
  chunk.length = remaining < chunk_size ? remaining : chunk_size;
  return chunk;
}

__device__ bool aligned16(const void* a, const void* b = nullptr, const void* c = nullptr, const void* d = nullptr,
                          const void* e = nullptr) {
  const uintptr_t bits = reinterpret_cast<uintptr_t>(a) | reinterpret_cast<uintptr_t>(b) |
                         reinterpret_cast<uintptr_t>(c) | reinterpret_cast<uintptr_t>(d) |
                         reinterpret_cast<uintptr_t>(e);
  return (bits & 15) == 0;
}

// ----- mixed precision: storage by tag, bf16 rounding on integer bits, stochastic rounding -----
// Host and device alike, so that tests without a GPU run the same element code
// (mixed_update_on_cpu). The hash and the roundings are fusedlr/_precision.py's, bit for bit.

__host__ __device__ inline uint32_t hash32(uint32_t x) {  // lowbias32
  x ^= x >> 16;
  x *= 0x7FEB352Du;
  x ^= x >> 15;
  x *= 0x846CA68Bu;
  return x ^ (x >> 16);
}

__host__ __device__ inline uint16_t bf16_from_bits(uint32_t bits, float value) {
  return value != value ? uint16_t(0x7FC0) : static_cast<uint16_t>(bits >> 16);  // NaN: the quiet NaN
}

struct F32 {
  using T = float;
  __host__ __device__ static float load(float x) { return x; }
  __host__ __device__ static float store(float x) { return x; }
};
struct F16 {
  using T = __half;
  __host__ __device__ static float load(__half x) { return __half2float(x); }
  __host__ __device__ static __half store(float x) { return __float2half_rn(x); }
};
struct BF16 {  // bfloat16 held as its 16 bits
  using T = uint16_t;
  __host__ __device__ static float load(uint16_t x) {
    const uint32_t bits = static_cast<uint32_t>(x) << 16;
    float value;
    memcpy(&value, &bits, 4);
    return value;
  }
  __host__ __device__ static uint16_t store(float x) {  // round to nearest even, c10's rule
    uint32_t bits;
    memcpy(&bits, &x, 4);
    return bf16_from_bits(bits + 0x7FFFu + ((bits >> 16) & 1u), x);
  }
  __host__ __device__ static uint16_t store_stochastic(float x, uint32_t key, int64_t index) {
    uint32_t bits;
    memcpy(&bits, &x, 4);
    const uint32_t inner = hash32(key + static_cast<uint32_t>(static_cast<uint64_t>(index) >> 32));
    const uint32_t noise = hash32(static_cast<uint32_t>(index) ^ inner) & 0xFFFFu;
    return bf16_from_bits(bits + noise, x);
  }
};

// ----- clip_value: clip_grad_value_ in registers ----------------------------------------------------

// g clamped to [-limit, limit]; NaN stays NaN, as torch.clamp keeps it.
template <typename Acc> __host__ __device__ inline Acc clamp_value(Acc g, Acc limit) {
  return g < -limit ? -limit : (g > limit ? limit : g);
}

// What the norm pass needs to sum unscaled, clamped grads: the clip value from the hyper table and
// a GradScaler's reciprocal (GradScaler's own: the float64 reciprocal rounded to float).
template <typename Acc> struct ValueClip {
  bool on;
  Acc limit, unscale;
  __device__ ValueClip(bool has_clip_value, const double* hyper, int64_t num_groups, const float* grad_scale)
      : on(has_clip_value), limit(0), unscale(1) {
    if (on) {
      limit = static_cast<Acc>(hyper[kGroupColumns * num_groups + kClipValue]);
      if (grad_scale != nullptr) unscale = static_cast<Acc>(static_cast<float>(1.0 / static_cast<double>(*grad_scale)));
    }
  }
  __device__ Acc operator()(Acc g) const { return on ? clamp_value(g * unscale, limit) : g; }
};

// ----- 1. norm pass: per-chunk partial sums of squares -------------------------------------------

// One chunk's sums of squares, added over the block in a fixed tree, written by thread 0.
__device__ void store_partials(int64_t c, double acc_grad, double acc_param, bool with_param, double* shared,
                               double* partial_grad, double* partial_param) {
  const double total_grad = block_sum(acc_grad, shared);
  const double total_param = with_param ? block_sum(acc_param, shared) : 0.0;
  if (threadIdx.x == 0) {
    partial_grad[c] = total_grad;
    if (with_param) partial_param[c] = total_param;
  }
}

template <typename T>
__global__ void grad_sumsq_kernel(const int64_t* tensor_table, int64_t num_tensors, const int64_t* chunk_table,
                                  int64_t num_chunks, int64_t chunk_begin, int64_t chunk_count, int64_t chunk_size,
                                  double* partial_grad, double* partial_param, bool with_param,
                                  const float* found_inf, const double* hyper, int64_t num_groups,
                                  const float* grad_scale, bool has_clip_value) {
  if (skipped(found_inf)) return;
  using S = Storage<T>;
  using Acc = typename S::Acc;
  constexpr int N = Pack<T>::N;
  const ValueClip<Acc> value_clip(has_clip_value, hyper, num_groups, grad_scale);
  __shared__ double shared[kThreads];
  for (int64_t c = chunk_begin + blockIdx.x; c < chunk_begin + chunk_count; c += gridDim.x) {
    const Chunk chunk = chunk_at(tensor_table, num_tensors, chunk_table, num_chunks, c, chunk_size);
    const T* grad = address<T>(tensor_table, kGrad, num_tensors, chunk.tensor) + chunk.start;
    const T* param = address<T>(tensor_table, kParam, num_tensors, chunk.tensor) + chunk.start;
    Acc acc_grad = 0, acc_param = 0;
    const int64_t vector_end = aligned16(grad, with_param ? param : nullptr) ? chunk.length / N * N : 0;
    for (int64_t i = threadIdx.x * N; i < vector_end; i += blockDim.x * N) {
      const Pack<T> g = *reinterpret_cast<const Pack<T>*>(grad + i);
#pragma unroll
      for (int j = 0; j < N; ++j) {
        const Acc gj = value_clip(S::load(g.v[j]));
        acc_grad += gj * gj;
      }
      if (with_param) {
        const Pack<T> p = *reinterpret_cast<const Pack<T>*>(param + i);
#pragma unroll
        for (int j = 0; j < N; ++j) acc_param += S::load(p.v[j]) * S::load(p.v[j]);
      }
    }
    for (int64_t i = vector_end + threadIdx.x; i < chunk.length; i += blockDim.x) {
      const Acc g = value_clip(S::load(grad[i]));
      acc_grad += g * g;
      if (with_param) {
        const Acc p = S::load(param[i]);
        acc_param += p * p;
      }
    }
    store_partials(c, acc_grad, acc_param, with_param, shared, partial_grad, partial_param);
  }
}

// Grads stored apart from their params (fp32 main_grad beside bf16/fp16 params): scalar loads.
template <typename P, typename G>
__global__ void mixed_grad_sumsq_kernel(const int64_t* tensor_table, int64_t num_tensors, const int64_t* chunk_table,
                                        int64_t num_chunks, int64_t chunk_begin, int64_t chunk_count,
                                        int64_t chunk_size, double* partial_grad, double* partial_param,
                                        bool with_param, const float* found_inf, const double* hyper,
                                        int64_t num_groups, const float* grad_scale, bool has_clip_value) {
  if (skipped(found_inf)) return;
  const ValueClip<float> value_clip(has_clip_value, hyper, num_groups, grad_scale);
  __shared__ double shared[kThreads];
  for (int64_t c = chunk_begin + blockIdx.x; c < chunk_begin + chunk_count; c += gridDim.x) {
    const Chunk chunk = chunk_at(tensor_table, num_tensors, chunk_table, num_chunks, c, chunk_size);
    const auto* grad = address<typename G::T>(tensor_table, kGrad, num_tensors, chunk.tensor) + chunk.start;
    const auto* param = address<typename P::T>(tensor_table, kParam, num_tensors, chunk.tensor) + chunk.start;
    float acc_grad = 0, acc_param = 0;
    for (int64_t i = threadIdx.x; i < chunk.length; i += blockDim.x) {
      const float g = value_clip(G::load(grad[i]));
      acc_grad += g * g;
      if (with_param) {
        const float p = P::load(param[i]);
        acc_param += p * p;
      }
    }
    store_partials(c, acc_grad, acc_param, with_param, shared, partial_grad, partial_param);
  }
}

// ----- 2. per-tensor sums, adding each tensor's partials in chunk order ---------------------------

__global__ void tensor_sumsq_kernel(const int64_t* tensor_table, int64_t num_tensors, const double* partial_grad,
                                    const double* partial_param, double* grad_sumsq, double* param_sumsq,
                                    bool with_param, const float* found_inf) {
  if (skipped(found_inf)) return;
  __shared__ double shared[kThreads];
  for (int64_t t = blockIdx.x; t < num_tensors; t += gridDim.x) {
    const int64_t begin = tensor_table[kChunkBegin * num_tensors + t];
    const int64_t count = tensor_table[kNumChunks * num_tensors + t];
    double acc_grad = 0, acc_param = 0;
    for (int64_t i = threadIdx.x; i < count; i += blockDim.x) {
      acc_grad += partial_grad[begin + i];
      if (with_param) acc_param += partial_param[begin + i];
    }
    const double total_grad = block_sum(acc_grad, shared);
    const double total_param = with_param ? block_sum(acc_param, shared) : 0.0;
    if (threadIdx.x == 0) {
      grad_sumsq[t] = total_grad;
      if (with_param) param_sumsq[t] = total_param;
    }
  }
}

// ----- the schedule program interpreter (host and device: the CPU copy is for tests) ---------------

__host__ __device__ double pow_by_squaring(double base, double n) {
  int64_t e = static_cast<int64_t>(n);
  double result = 1.0;
  for (int bit = 0; bit < 25; ++bit) {
    if (e & 1) result *= base;
    base *= base;
    e >>= 1;
  }
  return result;
}

// a ** b: exact by squaring for integral |b| < 2**25, exp(b * log(a)) otherwise (Triton's _pow).
__host__ __device__ double schedule_pow(double a, double b) {
  const double n = fabs(b);
  if (b == floor(b) && n < 33554432.0) {
    const double p = pow_by_squaring(a, n);
    return b < 0.0 ? 1.0 / p : p;
  }
  return exp(b * log(a));
}

__host__ __device__ void run_program(const double* code, int count, int scale_register, int offset_register,
                                     double k, double* scale, double* offset) {
  double regs[kMaxRegisters];
  regs[0] = k;
  for (int i = 0; i < count && i + 1 < kMaxRegisters; ++i) {
    const double* at = code + i * kInstructionWidth;
    const int op = static_cast<int>(at[0]);
    const double a = regs[static_cast<int>(at[1])], b = regs[static_cast<int>(at[2])], c = regs[static_cast<int>(at[3])];
    double r;
    switch (op) {
      case kConst: r = at[4]; break;
      case kAdd: r = a + b; break;
      case kSub: r = a - b; break;
      case kMul: r = a * b; break;
      case kDiv: r = a / b; break;
      case kMin: r = fmin(a, b); break;
      case kMax: r = fmax(a, b); break;
      case kLt: r = a < b ? 1.0 : 0.0; break;
      case kLe: r = a <= b ? 1.0 : 0.0; break;
      case kWhere: r = a != 0.0 ? b : c; break;
      case kCos: r = cos(a); break;
      case kSqrt: r = sqrt(a); break;
      case kExp: r = exp(a); break;
      case kLog: r = log(a); break;
      case kFloor: r = floor(a); break;
      case kPow: r = schedule_pow(a, b); break;
      default: r = fabs(a); break;
    }
    regs[i + 1] = r;
  }
  *scale = regs[scale_register];
  *offset = regs[offset_register];
}

// ----- 3. finalize: norms, clip, schedule, steps, per-tensor coefficients ---------------------------

__device__ double agc_scale(const int64_t* tensor_table, int64_t num_tensors, const double* hyper, int64_t num_groups,
                            const double* grad_sumsq, const double* param_sumsq, int64_t t, double inv_scale) {
  const int64_t group = tensor_table[kGroup * num_tensors + t];
  const double factor = hyper[kAgcClipFactor * num_groups + group];
  const double agc_eps = hyper[kAgcEps * num_groups + group];
  const double g_norm = sqrt(grad_sumsq[t]) * inv_scale;
  const double max_norm = fmax(sqrt(param_sumsq[t]), agc_eps) * factor;
  return (factor > 0.0 && g_norm > max_norm) ? max_norm / (g_norm + kNormEps) : 1.0;
}

__global__ void finalize_kernel(const int64_t* tensor_table, int64_t num_tensors, const double* hyper,
                                int64_t num_groups, const double* grad_sumsq, const double* param_sumsq, double* coef,
                                int64_t* counter, float* norm_out, bool has_norms, bool has_clip, bool has_agc,
                                bool is_adamw, const float* grad_scale, const float* found_inf, float* status,
                                int64_t* skipped_steps, bool skip_nonfinite, bool has_clip_value) {
  __shared__ double shared[kFinalizeThreads];
  __shared__ double lr_scale, lr_offset;
  const double* sched = hyper + kGroupColumns * num_groups;
  const double loss_inv = grad_scale != nullptr ? 1.0 / static_cast<double>(*grad_scale) : 1.0;
  // With clip_value the norm pass summed unscaled grads and the updates unscale each element
  // before the clamp (GradScaler's float reciprocal); the other scales then exclude it.
  const double inv_scale = has_clip_value ? 1.0 : loss_inv;
  const double unscale = has_clip_value ? static_cast<double>(static_cast<float>(loss_inv)) : 1.0;
  const double clip_value = has_clip_value ? sched[kClipValue] : 0.0;
  bool skip = found_inf != nullptr && *found_inf != 0.0f;
  double clip = 1.0;
  if (has_norms) {
    double acc = 0.0;
    for (int64_t t = threadIdx.x; t < num_tensors; t += blockDim.x) {
      double sumsq = grad_sumsq[t] * inv_scale * inv_scale;
      if (has_agc) {
        const double s = agc_scale(tensor_table, num_tensors, hyper, num_groups, grad_sumsq, param_sumsq, t, inv_scale);
        sumsq = sumsq * s * s;
      }
      acc += sumsq;
    }
    const double total = sqrt(block_sum(acc, shared));
    if (threadIdx.x == 0) *norm_out = static_cast<float>(total);
    if (has_clip) {
      const double ratio = sched[kMaxGradNorm] / (total + kNormEps);
      clip = isnan(ratio) ? ratio : fmin(ratio, 1.0);
    }
    if (skip_nonfinite && !isfinite(total)) skip = true;
  }
  // A skipped step changes nothing: no step count, no counter, and the updates read `status`.
  if (threadIdx.x == 0) {
    *status = skip ? 1.0f : 0.0f;
    *skipped_steps += skip ? 1 : 0;
  }
  const int64_t step_count = *counter;
  if (threadIdx.x == 0) {
    double scale, offset;
    run_program(sched + kScheduleSlots, static_cast<int>(sched[kNumInstructions]),
                static_cast<int>(sched[kScaleRegister]), static_cast<int>(sched[kOffsetRegister]),
                static_cast<double>(step_count), &scale, &offset);
    lr_scale = scale * sched[kHostMultiplier];
    lr_offset = offset;
  }
  __syncthreads();
  for (int64_t t = threadIdx.x; t < num_tensors; t += blockDim.x) {
    const int64_t group = tensor_table[kGroup * num_tensors + t];
    const double lr = hyper[kLr * num_groups + group] * lr_scale + lr_offset;
    const double beta1 = hyper[kBeta1 * num_groups + group];
    const double beta2 = hyper[kBeta2 * num_groups + group];
    double scale = hyper[kGradSign * num_groups + group] * clip * inv_scale;
    if (has_agc) scale *= agc_scale(tensor_table, num_tensors, hyper, num_groups, grad_sumsq, param_sumsq, t, inv_scale);
    double step_size = lr, bc2_sqrt = 1.0;
    if (is_adamw) {
      float* step_ptr = reinterpret_cast<float*>(static_cast<uintptr_t>(tensor_table[kStep * num_tensors + t]));
      const float step = *step_ptr + 1.0f;
      if (!skip) *step_ptr = step;
      step_size = lr / (1.0 - pow_by_squaring(beta1, step));
      bc2_sqrt = sqrt(1.0 - pow_by_squaring(beta2, step));
    }
    coef[kGradScale * num_tensors + t] = scale;
    coef[kDecay * num_tensors + t] = 1.0 - lr * hyper[kWeightDecay * num_groups + group];
    coef[kStepSize * num_tensors + t] = step_size;
    coef[kBc2Sqrt * num_tensors + t] = bc2_sqrt;
    coef[kCoefBeta1 * num_tensors + t] = beta1;
    coef[kOneMinusBeta1 * num_tensors + t] = 1.0 - beta1;
    coef[kCoefBeta2 * num_tensors + t] = beta2;
    coef[kOneMinusBeta2 * num_tensors + t] = 1.0 - beta2;
    coef[kCoefEps * num_tensors + t] = hyper[kEps * num_groups + group];
    // The key of this update's stochastic-rounding stream: hash(hash(hash(seed) ^ position) + k).
    const uint32_t seed = static_cast<uint32_t>(hyper[kSeed * num_groups + group]);
    const uint32_t position = static_cast<uint32_t>(tensor_table[kPosition * num_tensors + t]);
    const uint32_t key = hash32(hash32(hash32(seed) ^ position) + static_cast<uint32_t>(step_count));
    coef[kSrKey * num_tensors + t] = static_cast<double>(key);
    coef[kUnscale * num_tensors + t] = unscale;
    coef[kClipValueCoef * num_tensors + t] = clip_value;
  }
  __syncthreads();  // every thread has read the counter before it moves
  if (threadIdx.x == 0 && !skip) *counter = step_count + 1;
}

// ----- 4. updates ----------------------------------------------------------------------------------

template <typename Acc> struct Coefs {
  Acc grad_scale, decay, step_size, bc2_sqrt, beta1, w1, beta2, w2, eps, unscale, clip_value;
  // From the finalize's table (stride num_tensors), or from kCoefColumns values (stride 1, t 0).
  __host__ __device__ Coefs(const double* coef, int64_t num_tensors, int64_t t)
      : grad_scale(static_cast<Acc>(coef[kGradScale * num_tensors + t])),
        decay(static_cast<Acc>(coef[kDecay * num_tensors + t])),
        step_size(static_cast<Acc>(coef[kStepSize * num_tensors + t])),
        bc2_sqrt(static_cast<Acc>(coef[kBc2Sqrt * num_tensors + t])),
        beta1(static_cast<Acc>(coef[kCoefBeta1 * num_tensors + t])),
        w1(static_cast<Acc>(coef[kOneMinusBeta1 * num_tensors + t])),
        beta2(static_cast<Acc>(coef[kCoefBeta2 * num_tensors + t])),
        w2(static_cast<Acc>(coef[kOneMinusBeta2 * num_tensors + t])),
        eps(static_cast<Acc>(coef[kCoefEps * num_tensors + t])),
        unscale(static_cast<Acc>(coef[kUnscale * num_tensors + t])),
        clip_value(static_cast<Acc>(coef[kClipValueCoef * num_tensors + t])) {}
  // clip_grad_value_ (on the unscaled grad), then AGC, the clip and the sign in grad_scale.
  __host__ __device__ Acc effective_grad(Acc g) const {
    if (clip_value > Acc(0)) g = clamp_value(g * unscale, clip_value);
    return g * grad_scale;
  }
};

struct AdamW {
  template <typename Acc>
  __host__ __device__ static void apply(const Coefs<Acc>& k, Acc& p, Acc g, Acc& m, Acc& v, Acc* v_max) {
    g = k.effective_grad(g);
    p = p * k.decay;
    // torch's lerp(m, g, w): two forms, picked by |w| < 0.5.
    m = k.w1 < Acc(0.5) ? m + k.w1 * (g - m) : g - (g - m) * (Acc(1) - k.w1);
    v = v * k.beta2 + k.w2 * g * g;
    Acc v_hat = v;
    if (v_max != nullptr) {
      *v_max = *v_max > v ? *v_max : v;
      v_hat = *v_max;
    }
    p = p - k.step_size * (m / (sqrt(v_hat) / k.bc2_sqrt + k.eps));
  }
};

struct Lion {
  template <typename Acc>
  __host__ __device__ static void apply(const Coefs<Acc>& k, Acc& p, Acc g, Acc& m, Acc&, Acc*) {
    g = k.effective_grad(g);
    p = p * k.decay;
    const Acc update = m * k.beta1 + k.w1 * g;
    const Acc direction = update > Acc(0) ? Acc(1) : (update < Acc(0) ? Acc(-1) : Acc(0));
    p = p - k.step_size * direction;
    m = m * k.beta2 + k.w2 * g;
  }
};

template <typename T, typename Rule, bool kHasSecondMoment>
__global__ void update_kernel(const int64_t* tensor_table, int64_t num_tensors, const int64_t* chunk_table,
                              int64_t num_chunks, int64_t chunk_begin, int64_t chunk_count, int64_t chunk_size,
                              const double* coef, const float* found_inf) {
  if (skipped(found_inf)) return;
  using S = Storage<T>;
  using Acc = typename S::Acc;
  constexpr int N = Pack<T>::N;
  for (int64_t c = chunk_begin + blockIdx.x; c < chunk_begin + chunk_count; c += gridDim.x) {
    const Chunk chunk = chunk_at(tensor_table, num_tensors, chunk_table, num_chunks, c, chunk_size);
    const int64_t t = chunk.tensor;
    T* param = address<T>(tensor_table, kParam, num_tensors, t) + chunk.start;
    const T* grad = address<T>(tensor_table, kGrad, num_tensors, t) + chunk.start;
    T* exp_avg = address<T>(tensor_table, kExpAvg, num_tensors, t) + chunk.start;
    T* exp_avg_sq = kHasSecondMoment ? address<T>(tensor_table, kExpAvgSq, num_tensors, t) + chunk.start : nullptr;
    T* max_sq = address<T>(tensor_table, kMaxExpAvgSq, num_tensors, t);
    if (max_sq != nullptr) max_sq += chunk.start;
    const Coefs<Acc> k(coef, num_tensors, t);

    const int64_t vector_end = aligned16(param, grad, exp_avg, exp_avg_sq, max_sq) ? chunk.length / N * N : 0;
    for (int64_t i = threadIdx.x * N; i < vector_end; i += blockDim.x * N) {
      Pack<T> p = *reinterpret_cast<const Pack<T>*>(param + i);
      const Pack<T> g = *reinterpret_cast<const Pack<T>*>(grad + i);
      Pack<T> m = *reinterpret_cast<const Pack<T>*>(exp_avg + i);
      Pack<T> v{}, vm{};
      if (kHasSecondMoment) v = *reinterpret_cast<const Pack<T>*>(exp_avg_sq + i);
      if (max_sq != nullptr) vm = *reinterpret_cast<const Pack<T>*>(max_sq + i);
#pragma unroll
      for (int j = 0; j < N; ++j) {
        Acc pa = S::load(p.v[j]), ma = S::load(m.v[j]), va = kHasSecondMoment ? S::load(v.v[j]) : Acc(0);
        Acc vma = max_sq != nullptr ? S::load(vm.v[j]) : Acc(0);
        Rule::apply(k, pa, S::load(g.v[j]), ma, va, max_sq != nullptr ? &vma : nullptr);
        p.v[j] = S::store(pa);
        m.v[j] = S::store(ma);
        if (kHasSecondMoment) v.v[j] = S::store(va);
        if (max_sq != nullptr) vm.v[j] = S::store(vma);
      }
      *reinterpret_cast<Pack<T>*>(param + i) = p;
      *reinterpret_cast<Pack<T>*>(exp_avg + i) = m;
      if (kHasSecondMoment) *reinterpret_cast<Pack<T>*>(exp_avg_sq + i) = v;
      if (max_sq != nullptr) *reinterpret_cast<Pack<T>*>(max_sq + i) = vm;
    }
    for (int64_t i = vector_end + threadIdx.x; i < chunk.length; i += blockDim.x) {
      Acc pa = S::load(param[i]), ma = S::load(exp_avg[i]);
      Acc va = kHasSecondMoment ? S::load(exp_avg_sq[i]) : Acc(0);
      Acc vma = max_sq != nullptr ? S::load(max_sq[i]) : Acc(0);
      Rule::apply(k, pa, S::load(grad[i]), ma, va, max_sq != nullptr ? &vma : nullptr);
      param[i] = S::store(pa);
      exp_avg[i] = S::store(ma);
      if (kHasSecondMoment) exp_avg_sq[i] = S::store(va);
      if (max_sq != nullptr) max_sq[i] = S::store(vma);
    }
  }
}

// Buckets whose tensors are not all stored alike (fp32 master, stochastic rounding, moments or
// grads in another dtype than the param): scalar accesses, maths in float, one rounding per
// stored value; the same function runs on the host for tests.
template <typename P, typename G, typename S, typename Rule>
__host__ __device__ void mixed_element(const Coefs<float>& k, typename P::T* param, float* master,
                                       const typename G::T* grad, typename S::T* exp_avg, typename S::T* exp_avg_sq,
                                       typename S::T* max_sq, int64_t i, bool stochastic, uint32_t key,
                                       int64_t index) {
  float p = master != nullptr ? master[i] : P::load(param[i]);
  float m = S::load(exp_avg[i]);
  float v = exp_avg_sq != nullptr ? S::load(exp_avg_sq[i]) : 0.0f;
  float v_max = max_sq != nullptr ? S::load(max_sq[i]) : 0.0f;
  Rule::apply(k, p, G::load(grad[i]), m, v, max_sq != nullptr ? &v_max : nullptr);
  if (master != nullptr) master[i] = p;
  if constexpr (std::is_same_v<P, BF16>) {
    param[i] = stochastic ? BF16::store_stochastic(p, key, index) : BF16::store(p);
  } else {
    param[i] = P::store(p);
  }
  exp_avg[i] = S::store(m);
  if (exp_avg_sq != nullptr) exp_avg_sq[i] = S::store(v);
  if (max_sq != nullptr) max_sq[i] = S::store(v_max);
}

template <typename P, typename G, typename S, typename Rule, bool kHasSecondMoment>
__global__ void mixed_update_kernel(const int64_t* tensor_table, int64_t num_tensors, const int64_t* chunk_table,
                                    int64_t num_chunks, int64_t chunk_begin, int64_t chunk_count, int64_t chunk_size,
                                    const double* coef, const float* found_inf, bool stochastic) {
  if (skipped(found_inf)) return;
  for (int64_t c = chunk_begin + blockIdx.x; c < chunk_begin + chunk_count; c += gridDim.x) {
    const Chunk chunk = chunk_at(tensor_table, num_tensors, chunk_table, num_chunks, c, chunk_size);
    const int64_t t = chunk.tensor;
    auto* param = address<typename P::T>(tensor_table, kParam, num_tensors, t) + chunk.start;
    float* master = address<float>(tensor_table, kMaster, num_tensors, t);
    if (master != nullptr) master += chunk.start;
    const auto* grad = address<typename G::T>(tensor_table, kGrad, num_tensors, t) + chunk.start;
    auto* exp_avg = address<typename S::T>(tensor_table, kExpAvg, num_tensors, t) + chunk.start;
    typename S::T* exp_avg_sq = nullptr;
    if (kHasSecondMoment) exp_avg_sq = address<typename S::T>(tensor_table, kExpAvgSq, num_tensors, t) + chunk.start;
    auto* max_sq = address<typename S::T>(tensor_table, kMaxExpAvgSq, num_tensors, t);
    if (max_sq != nullptr) max_sq += chunk.start;
    const Coefs<float> k(coef, num_tensors, t);
    const uint32_t key = static_cast<uint32_t>(coef[kSrKey * num_tensors + t]);
    for (int64_t i = threadIdx.x; i < chunk.length; i += blockDim.x) {
      mixed_element<P, G, S, Rule>(k, param, master, grad, exp_avg, exp_avg_sq, max_sq, i, stochastic, key,
                                   chunk.start + i);
    }
  }
}

template <typename T> const T* as_ptr(uint64_t address) { return reinterpret_cast<const T*>(address); }
template <typename T> T* as_mut(uint64_t address) { return reinterpret_cast<T*>(address); }
cudaStream_t as_stream(uint64_t stream) { return reinterpret_cast<cudaStream_t>(stream); }

// Calls `launch.template operator()<T>()` with T the storage type of `dtype`.
template <typename Launch> void dispatch(int dtype, Launch&& launch) {
  switch (dtype) {
    case kFloat32: launch(float{}); break;
    case kFloat64: launch(double{}); break;
    case kFloat16: launch(__half{}); break;
    case kBFloat16: launch(__nv_bfloat16{}); break;
    default: throw std::invalid_argument("fusedlr: unknown dtype code " + std::to_string(dtype));
  }
}

}  // namespace

void grad_sumsq(int dtype, int grad_dtype, uint64_t tensor_table, int64_t num_tensors, uint64_t chunk_table,
                int64_t num_chunks, int64_t chunk_begin, int64_t chunk_count, int64_t chunk_size,
                uint64_t partial_grad, uint64_t partial_param, bool with_param, uint64_t found_inf, uint64_t hyper,
                int64_t num_groups, uint64_t grad_scale, bool has_clip_value, uint64_t stream) {
  if (chunk_count == 0) return;
  if (grad_dtype != dtype) {  // fp32 grads beside bf16/fp16 params
    if (grad_dtype != kFloat32 || (dtype != kBFloat16 && dtype != kFloat16)) {
      throw std::invalid_argument("fusedlr: grads of dtype code " + std::to_string(grad_dtype) +
                                  " for params of dtype code " + std::to_string(dtype));
    }
    auto launch = [&](auto param_tag) {
      mixed_grad_sumsq_kernel<decltype(param_tag), F32><<<chunk_grid(chunk_count), kThreads, 0, as_stream(stream)>>>(
          as_ptr<int64_t>(tensor_table), num_tensors, as_ptr<int64_t>(chunk_table), num_chunks, chunk_begin,
          chunk_count, chunk_size, as_mut<double>(partial_grad), as_mut<double>(partial_param), with_param,
          as_ptr<float>(found_inf), as_ptr<double>(hyper), num_groups, as_ptr<float>(grad_scale), has_clip_value);
    };
    if (dtype == kBFloat16) launch(BF16{}); else launch(F16{});
    check(cudaGetLastError(), "mixed_grad_sumsq_kernel");
    return;
  }
  dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    grad_sumsq_kernel<T><<<chunk_grid(chunk_count), kThreads, 0, as_stream(stream)>>>(
        as_ptr<int64_t>(tensor_table), num_tensors, as_ptr<int64_t>(chunk_table), num_chunks, chunk_begin,
        chunk_count, chunk_size, as_mut<double>(partial_grad), as_mut<double>(partial_param), with_param,
        as_ptr<float>(found_inf), as_ptr<double>(hyper), num_groups, as_ptr<float>(grad_scale), has_clip_value);
  });
  check(cudaGetLastError(), "grad_sumsq_kernel");
}

void tensor_sumsq(uint64_t tensor_table, int64_t num_tensors, uint64_t partial_grad, uint64_t partial_param,
                  uint64_t grad_sumsq, uint64_t param_sumsq, bool with_param, uint64_t found_inf, uint64_t stream) {
  const int64_t cap = static_cast<int64_t>(sm_count()) * 8;
  const int grid = static_cast<int>(num_tensors < cap ? num_tensors : cap);
  tensor_sumsq_kernel<<<grid, kThreads, 0, as_stream(stream)>>>(
      as_ptr<int64_t>(tensor_table), num_tensors, as_ptr<double>(partial_grad), as_ptr<double>(partial_param),
      as_mut<double>(grad_sumsq), as_mut<double>(param_sumsq), with_param, as_ptr<float>(found_inf));
  check(cudaGetLastError(), "tensor_sumsq_kernel");
}

void finalize(uint64_t tensor_table, int64_t num_tensors, uint64_t hyper, int64_t num_groups, uint64_t grad_sumsq,
              uint64_t param_sumsq, uint64_t coef, uint64_t counter, uint64_t norm_out, bool has_norms,
              bool has_clip, bool has_agc, bool is_adamw, uint64_t grad_scale, uint64_t found_inf, uint64_t status,
              uint64_t skipped_steps, bool skip_nonfinite, bool has_clip_value, uint64_t stream) {
  finalize_kernel<<<1, kFinalizeThreads, 0, as_stream(stream)>>>(
      as_ptr<int64_t>(tensor_table), num_tensors, as_ptr<double>(hyper), num_groups, as_ptr<double>(grad_sumsq),
      as_ptr<double>(param_sumsq), as_mut<double>(coef), as_mut<int64_t>(counter), as_mut<float>(norm_out), has_norms,
      has_clip, has_agc, is_adamw, as_ptr<float>(grad_scale), as_ptr<float>(found_inf), as_mut<float>(status),
      as_mut<int64_t>(skipped_steps), skip_nonfinite, has_clip_value);
  check(cudaGetLastError(), "finalize_kernel");
}

namespace {

template <typename Rule, bool kHasSecondMoment>
void launch_update(int dtype, uint64_t tensor_table, int64_t num_tensors, uint64_t chunk_table, int64_t num_chunks,
                   int64_t chunk_begin, int64_t chunk_count, int64_t chunk_size, uint64_t coef, uint64_t found_inf,
                   uint64_t stream) {
  if (chunk_count == 0) return;
  dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    update_kernel<T, Rule, kHasSecondMoment><<<chunk_grid(chunk_count), kThreads, 0, as_stream(stream)>>>(
        as_ptr<int64_t>(tensor_table), num_tensors, as_ptr<int64_t>(chunk_table), num_chunks, chunk_begin,
        chunk_count, chunk_size, as_ptr<double>(coef), as_ptr<float>(found_inf));
  });
  check(cudaGetLastError(), "update_kernel");
}

}  // namespace

void adamw_update(int dtype, uint64_t tensor_table, int64_t num_tensors, uint64_t chunk_table, int64_t num_chunks,
                  int64_t chunk_begin, int64_t chunk_count, int64_t chunk_size, uint64_t coef, uint64_t found_inf,
                  uint64_t stream) {
  launch_update<AdamW, true>(dtype, tensor_table, num_tensors, chunk_table, num_chunks, chunk_begin, chunk_count,
                             chunk_size, coef, found_inf, stream);
}

void lion_update(int dtype, uint64_t tensor_table, int64_t num_tensors, uint64_t chunk_table, int64_t num_chunks,
                 int64_t chunk_begin, int64_t chunk_count, int64_t chunk_size, uint64_t coef, uint64_t found_inf,
                 uint64_t stream) {
  launch_update<Lion, false>(dtype, tensor_table, num_tensors, chunk_table, num_chunks, chunk_begin, chunk_count,
                             chunk_size, coef, found_inf, stream);
}

namespace {

// Calls launch(P{}, G{}, S{}) for the storage tags of a mixed bucket; the combinations the
// Python side can produce (fusedlr/_precision.py), nothing else.
template <typename Launch> void dispatch_mixed(int p, int g, int s, Launch&& launch) {
  const auto is = [=](int a, int b, int c) { return p == a && g == b && s == c; };
  if (is(kFloat32, kFloat32, kFloat32)) return launch(F32{}, F32{}, F32{});
  if (is(kFloat32, kFloat32, kBFloat16)) return launch(F32{}, F32{}, BF16{});
  if (is(kBFloat16, kBFloat16, kFloat32)) return launch(BF16{}, BF16{}, F32{});
  if (is(kBFloat16, kBFloat16, kBFloat16)) return launch(BF16{}, BF16{}, BF16{});
  if (is(kBFloat16, kFloat32, kFloat32)) return launch(BF16{}, F32{}, F32{});
  if (is(kBFloat16, kFloat32, kBFloat16)) return launch(BF16{}, F32{}, BF16{});
  if (is(kFloat16, kFloat16, kFloat32)) return launch(F16{}, F16{}, F32{});
  if (is(kFloat16, kFloat16, kBFloat16)) return launch(F16{}, F16{}, BF16{});
  if (is(kFloat16, kFloat16, kFloat16)) return launch(F16{}, F16{}, F16{});
  if (is(kFloat16, kFloat32, kFloat32)) return launch(F16{}, F32{}, F32{});
  if (is(kFloat16, kFloat32, kBFloat16)) return launch(F16{}, F32{}, BF16{});
  if (is(kFloat16, kFloat32, kFloat16)) return launch(F16{}, F32{}, F16{});
  throw std::invalid_argument("fusedlr: no mixed-precision kernel for param/grad/state dtype codes " +
                              std::to_string(p) + "/" + std::to_string(g) + "/" + std::to_string(s));
}

}  // namespace

void mixed_update(bool is_adamw, int param_dtype, int grad_dtype, int state_dtype, uint64_t tensor_table,
                  int64_t num_tensors, uint64_t chunk_table, int64_t num_chunks, int64_t chunk_begin,
                  int64_t chunk_count, int64_t chunk_size, uint64_t coef, uint64_t found_inf, bool stochastic,
                  uint64_t stream) {
  if (chunk_count == 0) return;
  dispatch_mixed(param_dtype, grad_dtype, state_dtype, [&](auto p, auto g, auto s) {
    using P = decltype(p);
    using G = decltype(g);
    using S = decltype(s);
    const auto launch = [&](auto kernel) {
      kernel<<<chunk_grid(chunk_count), kThreads, 0, as_stream(stream)>>>(
          as_ptr<int64_t>(tensor_table), num_tensors, as_ptr<int64_t>(chunk_table), num_chunks, chunk_begin,
          chunk_count, chunk_size, as_ptr<double>(coef), as_ptr<float>(found_inf), stochastic);
    };
    if (is_adamw) launch(mixed_update_kernel<P, G, S, AdamW, true>);
    else launch(mixed_update_kernel<P, G, S, Lion, false>);
  });
  check(cudaGetLastError(), "mixed_update_kernel");
}

void mixed_update_on_cpu(bool is_adamw, int param_dtype, int grad_dtype, int state_dtype, uint64_t param,
                         uint64_t master, uint64_t grad, uint64_t exp_avg, uint64_t exp_avg_sq, uint64_t max_sq,
                         int64_t numel, int64_t first_index, const double* coef, bool stochastic) {
  dispatch_mixed(param_dtype, grad_dtype, state_dtype, [&](auto p, auto g, auto s) {
    using P = decltype(p);
    using G = decltype(g);
    using S = decltype(s);
    const Coefs<float> k(coef, 1, 0);
    const uint32_t key = static_cast<uint32_t>(coef[kSrKey]);
    for (int64_t i = 0; i < numel; ++i) {
      auto element = is_adamw ? mixed_element<P, G, S, AdamW> : mixed_element<P, G, S, Lion>;
      element(k, as_mut<typename P::T>(param), as_mut<float>(master), as_ptr<typename G::T>(grad),
              as_mut<typename S::T>(exp_avg), as_mut<typename S::T>(exp_avg_sq), as_mut<typename S::T>(max_sq), i,
              stochastic, key, first_index + i);
    }
  });
}

void run_schedule_program(const double* program, int num_instructions, int scale_register, int offset_register,
                          double k, double* scale, double* offset) {
  run_program(program, num_instructions, scale_register, offset_register, k, scale, offset);
}

int cuda_runtime_version() { return CUDART_VERSION; }

}  // namespace fusedlr

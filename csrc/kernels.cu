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
  __host__ __device__ static float load(float x) { return x; }
  __host__ __device__ static float store(float x) { return x; }
};
template <> struct Storage<double> {
  using Acc = double;
  __host__ __device__ static double load(double x) { return x; }
  __host__ __device__ static double store(double x) { return x; }
};
template <> struct Storage<__half> {
  using Acc = float;
  __host__ __device__ static float load(__half x) { return __half2float(x); }
  __host__ __device__ static __half store(float x) { return __float2half_rn(x); }
};
template <> struct Storage<__nv_bfloat16> {
  using Acc = float;
  __host__ __device__ static float load(__nv_bfloat16 x) { return __bfloat162float(x); }
  __host__ __device__ static __nv_bfloat16 store(float x) { return __float2bfloat16_rn(x); }
};

// 16 bytes of T: one vector load or store.
template <typename T> struct alignas(16) Pack {
  static constexpr int N = 16 / sizeof(T);
  T v[N];
};

template <typename T> __host__ __device__ T* address(const int64_t* table, int column, int64_t num_tensors, int64_t t) {
  return reinterpret_cast<T*>(static_cast<uintptr_t>(table[column * num_tensors + t]));
}

__host__ __device__ bool skipped(const float* found_inf) { return found_inf != nullptr && *found_inf != 0.0f; }

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

__host__ __device__ Chunk chunk_at(const int64_t* tensor_table, int64_t num_tensors, const int64_t* chunk_table,
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
  __host__ __device__ ValueClip(bool has_clip_value, const double* hyper, int64_t num_groups, const float* grad_scale)
      : on(has_clip_value), limit(0), unscale(1) {
    if (on) {
      limit = static_cast<Acc>(hyper[kGroupColumns * num_groups + kClipValue]);
      if (grad_scale != nullptr) unscale = static_cast<Acc>(static_cast<float>(1.0 / static_cast<double>(*grad_scale)));
    }
  }
  __host__ __device__ Acc operator()(Acc g) const { return on ? clamp_value(g * unscale, limit) : g; }
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
// One block on the device; for tests, the same code on the host as a single thread (`Threads`
// gives the thread index and count, the block's sum and its barrier).

__host__ __device__ double agc_scale(const int64_t* tensor_table, int64_t num_tensors, const double* hyper,
                                     int64_t num_groups, const double* grad_sumsq, const double* param_sumsq,
                                     int64_t t, double inv_scale) {
  const int64_t group = tensor_table[kGroup * num_tensors + t];
  const double factor = hyper[kAgcClipFactor * num_groups + group];
  const double agc_eps = hyper[kAgcEps * num_groups + group];
  const double g_norm = sqrt(grad_sumsq[t]) * inv_scale;
  const double max_norm = fmax(sqrt(param_sumsq[t]), agc_eps) * factor;
  return (factor > 0.0 && g_norm > max_norm) ? max_norm / (g_norm + kNormEps) : 1.0;
}

struct FinalizeTables {
  const int64_t* tensor_table;
  int64_t num_tensors;
  const double* hyper;
  int64_t num_groups;
  const double* grad_sumsq;
  const double* param_sumsq;
  double* coef;
  double* group_sums;  // schedule-free only: [kGroupSumRows, G]
};

// What every tensor's coefficients of this step share.
struct StepScalars {
  int rule;
  bool has_agc, skip;
  double clip, inv_scale, unscale, clip_value, lr_scale, lr_offset;
  int64_t step_count;
};

// Schedule-free's bookkeeping of update k for group g, as schedulefree.AdamWScheduleFree does it on
// the host (fusedlr/reference.py schedulefree_scalars): lr_max and weight_sum kept unless the step
// is skipped; this update's ckp1 and warmed-up lr for the per-tensor coefficients.
__host__ __device__ void schedulefree_group(const FinalizeTables& x, const double* rules, const StepScalars& s,
                                            int64_t g) {
  const int64_t G = x.num_groups;
  const double k = static_cast<double>(s.step_count);
  double lr = x.hyper[kLr * G + g] * s.lr_scale + s.lr_offset;
  const double warmup = rules[kWarmupSteps * G + g];
  if (k < warmup) lr = lr * ((k + 1.0) / warmup);
  const double lr_max = fmax(lr, x.group_sums[kLrMax * G + g]);
  const double weight = schedule_pow(k + 1.0, rules[kR * G + g]) * schedule_pow(lr_max, rules[kWeightLrPower * G + g]);
  const double weight_sum = x.group_sums[kWeightSum * G + g] + weight;
  if (!s.skip) {
    x.group_sums[kLrMax * G + g] = lr_max;
    x.group_sums[kWeightSum * G + g] = weight_sum;
  }
  x.group_sums[kCkp1 * G + g] = weight_sum != 0.0 ? weight / weight_sum : 0.0;
  x.group_sums[kScheduledLr * G + g] = lr;
}

// The coefficients of tensor t (named after AdamW's; fusedlr/_triton/kernels.py's header says what
// SGD and schedule-free keep in them), and its step count advanced unless the step is skipped.
__host__ __device__ void tensor_coefs(const FinalizeTables& x, const double* rules, const StepScalars& s, int64_t t) {
  const int64_t G = x.num_groups, T = x.num_tensors;
  const int64_t group = x.tensor_table[kGroup * T + t];
  const double lr = x.hyper[kLr * G + group] * s.lr_scale + s.lr_offset;
  const double weight_decay = x.hyper[kWeightDecay * G + group];
  double beta1 = x.hyper[kBeta1 * G + group];
  double beta2 = x.hyper[kBeta2 * G + group];
  double scale = x.hyper[kGradSign * G + group] * s.clip * s.inv_scale;
  if (s.has_agc) scale *= agc_scale(x.tensor_table, T, x.hyper, G, x.grad_sumsq, x.param_sumsq, t, s.inv_scale);
  double eps = x.hyper[kEps * G + group];
  double decay = 1.0 - lr * weight_decay;
  double w1 = 1.0 - beta1, w2 = 1.0 - beta2, step_size = lr, bc2_sqrt = 1.0;
  float* step_ptr = reinterpret_cast<float*>(static_cast<uintptr_t>(x.tensor_table[kStep * T + t]));
  if (s.rule == kRuleAdamW) {
    const float step = *step_ptr + 1.0f;
    if (!s.skip) *step_ptr = step;
    step_size = lr / (1.0 - pow_by_squaring(beta1, step));
    bc2_sqrt = sqrt(1.0 - pow_by_squaring(beta2, step));
  } else if (s.rule == kRuleSgd) {
    // The momentum buffer's step (0: never written) sits in the step column; a tensor without a
    // buffer (momentum 0) has address 0 there. beta1 holds the momentum.
    const double momentum = beta1;
    const bool has_buffer = step_ptr != nullptr && momentum != 0.0;
    const float step = has_buffer ? *step_ptr : 0.0f;
    if (has_buffer && !s.skip) *step_ptr = step + 1.0f;
    const bool first_update = step == 0.0f;  // torch's first buffer is a clone of the grad
    const bool coupled = rules[kCoupledWeightDecay * G + group] != 0.0;
    beta1 = first_update ? 0.0 : momentum;
    w1 = first_update ? 1.0 : 1.0 - rules[kDampening * G + group];
    beta2 = rules[kNesterov * G + group] != 0.0 ? momentum : 0.0;
    w2 = has_buffer ? 1.0 : 0.0;
    eps = coupled ? weight_decay : 0.0;
    if (coupled) decay = 1.0;
  } else if (s.rule == kRuleScheduleFree) {
    const double ckp1 = x.group_sums[kCkp1 * G + group];
    step_size = x.group_sums[kScheduledLr * G + group];  // the warmed-up lr
    bc2_sqrt = 1.0 - pow_by_squaring(beta2, static_cast<double>(s.step_count) + 1.0);  // not its root
    w1 = step_size * (beta1 * (1.0 - ckp1) - 1.0);
    beta1 = ckp1;
    decay = weight_decay;
  }
  double* out = x.coef + t;
  out[kGradScale * T] = scale;
  out[kDecay * T] = decay;
  out[kStepSize * T] = step_size;
  out[kBc2Sqrt * T] = bc2_sqrt;
  out[kCoefBeta1 * T] = beta1;
  out[kOneMinusBeta1 * T] = w1;
  out[kCoefBeta2 * T] = beta2;
  out[kOneMinusBeta2 * T] = w2;
  out[kCoefEps * T] = eps;
  // The key of this update's stochastic-rounding stream: hash(hash(hash(seed) ^ position) + k).
  const uint32_t seed = static_cast<uint32_t>(x.hyper[kSeed * G + group]);
  const uint32_t position = static_cast<uint32_t>(x.tensor_table[kPosition * T + t]);
  const uint32_t key = hash32(hash32(hash32(seed) ^ position) + static_cast<uint32_t>(s.step_count));
  out[kSrKey * T] = static_cast<double>(key);
  out[kUnscale * T] = s.unscale;
  out[kClipValueCoef * T] = s.clip_value;
}

struct FinalizeFlags {
  bool has_norms, has_clip, has_agc, skip_nonfinite, has_clip_value;
  int rule;
};

struct BlockThreads {  // the finalize kernel's block
  double* shared;  // kFinalizeThreads doubles
  __device__ int64_t index() const { return threadIdx.x; }
  __device__ int64_t count() const { return blockDim.x; }
  __device__ double sum(double value) const { return block_sum(value, shared); }
  __device__ void sync() const { __syncthreads(); }
};

struct HostThread {  // the finalize's host twin: one thread
  __host__ __device__ int64_t index() const { return 0; }
  __host__ __device__ int64_t count() const { return 1; }
  __host__ __device__ double sum(double value) const { return value; }
  __host__ __device__ void sync() const {}
};

// `broadcast`: two doubles all threads see (shared memory on the device).
#pragma nv_exec_check_disable
template <typename Threads>
__host__ __device__ void finalize_body(const Threads& threads, const FinalizeTables& x, const FinalizeFlags& f,
                                       int64_t* counter, float* norm_out, const float* grad_scale,
                                       const float* found_inf, float* status, int64_t* skipped_steps,
                                       double* broadcast) {
  const double* sched = x.hyper + kGroupColumns * x.num_groups;
  const double loss_inv = grad_scale != nullptr ? 1.0 / static_cast<double>(*grad_scale) : 1.0;
  StepScalars s;
  s.rule = f.rule;
  s.has_agc = f.has_agc;
  // With clip_value the norm pass summed unscaled grads and the updates unscale each element
  // before the clamp (GradScaler's float reciprocal); the other scales then exclude it.
  s.inv_scale = f.has_clip_value ? 1.0 : loss_inv;
  s.unscale = f.has_clip_value ? static_cast<double>(static_cast<float>(loss_inv)) : 1.0;
  s.clip_value = f.has_clip_value ? sched[kClipValue] : 0.0;
  s.skip = found_inf != nullptr && *found_inf != 0.0f;
  s.clip = 1.0;
  if (f.has_norms) {
    double acc = 0.0;
    for (int64_t t = threads.index(); t < x.num_tensors; t += threads.count()) {
      double sumsq = x.grad_sumsq[t] * s.inv_scale * s.inv_scale;
      if (f.has_agc) {
        const double a = agc_scale(x.tensor_table, x.num_tensors, x.hyper, x.num_groups, x.grad_sumsq,
                                   x.param_sumsq, t, s.inv_scale);
        sumsq = sumsq * a * a;
      }
      acc += sumsq;
    }
    const double total = sqrt(threads.sum(acc));
    if (threads.index() == 0) *norm_out = static_cast<float>(total);
    if (f.has_clip) {
      const double ratio = sched[kMaxGradNorm] / (total + kNormEps);
      s.clip = ratio != ratio ? ratio : fmin(ratio, 1.0);
    }
    if (f.skip_nonfinite && !(total - total == 0.0)) s.skip = true;  // inf - inf and nan - nan are nan
  }
  // A skipped step changes nothing: no step count, no counter, and the updates read `status`.
  if (threads.index() == 0) {
    *status = s.skip ? 1.0f : 0.0f;
    *skipped_steps += s.skip ? 1 : 0;
  }
  s.step_count = *counter;
  if (threads.index() == 0) {
    double scale, offset;
    run_program(sched + kScheduleSlots, static_cast<int>(sched[kNumInstructions]),
                static_cast<int>(sched[kScaleRegister]), static_cast<int>(sched[kOffsetRegister]),
                static_cast<double>(s.step_count), &scale, &offset);
    broadcast[0] = scale * sched[kHostMultiplier];
    broadcast[1] = offset;
  }
  threads.sync();
  s.lr_scale = broadcast[0];
  s.lr_offset = broadcast[1];
  // SGD's and schedule-free's group hyperparameters: after the schedule program.
  const double* rules = sched + kScheduleSlots + static_cast<int64_t>(sched[kNumInstructions]) * kInstructionWidth;
  if (f.rule == kRuleScheduleFree) {
    for (int64_t g = threads.index(); g < x.num_groups; g += threads.count()) schedulefree_group(x, rules, s, g);
    threads.sync();  // the per-tensor loop reads every group's ckp1 and lr
  }
  for (int64_t t = threads.index(); t < x.num_tensors; t += threads.count()) tensor_coefs(x, rules, s, t);
  threads.sync();  // every thread has read the counter before it moves
  if (threads.index() == 0 && !s.skip) *counter = s.step_count + 1;
}

__global__ void finalize_kernel(FinalizeTables x, FinalizeFlags f, int64_t* counter, float* norm_out,
                                const float* grad_scale, const float* found_inf, float* status,
                                int64_t* skipped_steps) {
  __shared__ double shared[kFinalizeThreads];
  __shared__ double broadcast[2];
  finalize_body(BlockThreads{shared}, x, f, counter, norm_out, grad_scale, found_inf, status, skipped_steps,
                broadcast);
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

// The rules: one element's update in registers. `m` is the exp_avg column's state (AdamW's and
// LION's first moment, SGD's momentum buffer, schedule-free's z), `v` the exp_avg_sq column's.
struct AdamW {
  static constexpr bool kSecondMoment = true;
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
  static constexpr bool kSecondMoment = false;
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

// torch.optim.SGD: eps holds the coupled weight decay (decay is 1 then), beta1 / w1 the buffer's
// decay and the grad's weight in it, beta2 nesterov's momentum (0 without), w2 1 where the tensor
// has a momentum buffer (m is left as it is otherwise).
struct Sgd {
  static constexpr bool kSecondMoment = false;
  template <typename Acc>
  __host__ __device__ static void apply(const Coefs<Acc>& k, Acc& p, Acc g, Acc& m, Acc&, Acc*) {
    g = k.effective_grad(g);
    p = p * k.decay;
    g = g + k.eps * p;
    Acc direction = g;
    if (k.w2 != Acc(0)) {
      m = m * k.beta1 + k.w1 * g;
      direction = k.beta2 != Acc(0) ? g + k.beta2 * m : m;
    }
    p = p - k.step_size * direction;
  }
};

// schedulefree.AdamWScheduleFree: p is y, m is z; bc2_sqrt holds the bias correction itself,
// beta1 ckp1, w1 y's step lr * (beta1 * (1 - ckp1) - 1), decay the weight decay (at y).
struct ScheduleFree {
  static constexpr bool kSecondMoment = true;
  template <typename Acc>
  __host__ __device__ static void apply(const Coefs<Acc>& k, Acc& p, Acc g, Acc& m, Acc& v, Acc*) {
    g = k.effective_grad(g);
    v = v * k.beta2 + k.w2 * g * g;
    Acc normalized = g / (sqrt(v / k.bc2_sqrt) + k.eps);
    normalized = normalized + k.decay * p;
    p = k.beta1 < Acc(0.5) ? p + k.beta1 * (m - p) : m - (m - p) * (Acc(1) - k.beta1);  // lerp(y, z, ckp1)
    p = p + k.w1 * normalized;
    m = m - k.step_size * normalized;
  }
};

// One element of a bucket stored alike (the vectorised kernel's scalar tail, and its host twin).
// exp_avg is null for SGD without momentum; exp_avg_sq for the rules without a second moment.
template <typename T, typename Rule>
__host__ __device__ void update_element(const Coefs<typename Storage<T>::Acc>& k, T* param, const T* grad,
                                        T* exp_avg, T* exp_avg_sq, T* max_sq, int64_t i) {
  using S = Storage<T>;
  using Acc = typename S::Acc;
  Acc pa = S::load(param[i]), ma = exp_avg != nullptr ? S::load(exp_avg[i]) : Acc(0);
  Acc va = Rule::kSecondMoment ? S::load(exp_avg_sq[i]) : Acc(0);
  Acc vma = max_sq != nullptr ? S::load(max_sq[i]) : Acc(0);
  Rule::apply(k, pa, S::load(grad[i]), ma, va, max_sq != nullptr ? &vma : nullptr);
  param[i] = S::store(pa);
  if (exp_avg != nullptr) exp_avg[i] = S::store(ma);
  if (Rule::kSecondMoment) exp_avg_sq[i] = S::store(va);
  if (max_sq != nullptr) max_sq[i] = S::store(vma);
}

// The state addresses of tensor t from its chunk's start (null where the column holds 0).
template <typename T> __host__ __device__ T* at_chunk(const int64_t* table, int column, int64_t num_tensors,
                                                      int64_t t, int64_t start) {
  T* base = address<T>(table, column, num_tensors, t);
  return base != nullptr ? base + start : nullptr;
}

template <typename T, typename Rule>
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
    T* exp_avg = at_chunk<T>(tensor_table, kExpAvg, num_tensors, t, chunk.start);
    T* exp_avg_sq = Rule::kSecondMoment ? at_chunk<T>(tensor_table, kExpAvgSq, num_tensors, t, chunk.start) : nullptr;
    T* max_sq = at_chunk<T>(tensor_table, kMaxExpAvgSq, num_tensors, t, chunk.start);
    const Coefs<Acc> k(coef, num_tensors, t);

    const int64_t vector_end = aligned16(param, grad, exp_avg, exp_avg_sq, max_sq) ? chunk.length / N * N : 0;
    for (int64_t i = threadIdx.x * N; i < vector_end; i += blockDim.x * N) {
      Pack<T> p = *reinterpret_cast<const Pack<T>*>(param + i);
      const Pack<T> g = *reinterpret_cast<const Pack<T>*>(grad + i);
      Pack<T> m{}, v{}, vm{};
      if (exp_avg != nullptr) m = *reinterpret_cast<const Pack<T>*>(exp_avg + i);
      if (Rule::kSecondMoment) v = *reinterpret_cast<const Pack<T>*>(exp_avg_sq + i);
      if (max_sq != nullptr) vm = *reinterpret_cast<const Pack<T>*>(max_sq + i);
#pragma unroll
      for (int j = 0; j < N; ++j) {
        Acc pa = S::load(p.v[j]), ma = S::load(m.v[j]), va = S::load(v.v[j]), vma = S::load(vm.v[j]);
        Rule::apply(k, pa, S::load(g.v[j]), ma, va, max_sq != nullptr ? &vma : nullptr);
        p.v[j] = S::store(pa);
        m.v[j] = S::store(ma);
        v.v[j] = S::store(va);
        vm.v[j] = S::store(vma);
      }
      *reinterpret_cast<Pack<T>*>(param + i) = p;
      if (exp_avg != nullptr) *reinterpret_cast<Pack<T>*>(exp_avg + i) = m;
      if (Rule::kSecondMoment) *reinterpret_cast<Pack<T>*>(exp_avg_sq + i) = v;
      if (max_sq != nullptr) *reinterpret_cast<Pack<T>*>(max_sq + i) = vm;
    }
    for (int64_t i = vector_end + threadIdx.x; i < chunk.length; i += blockDim.x) {
      update_element<T, Rule>(k, param, grad, exp_avg, exp_avg_sq, max_sq, i);
    }
  }
}

// ----- split master weights (fusedlr/_split_master.py): integer arithmetic, host and device -----

// The float32 weight that a bf16 param (its bits) and its int8 residual stand for.
__host__ __device__ inline float split_weight(uint16_t param, int8_t residual) {
  const uint32_t bits = (static_cast<uint32_t>(param) << 16) + static_cast<uint32_t>(static_cast<int32_t>(residual) * 256);
  float w;
  memcpy(&w, &bits, 4);
  return w;
}

// `w` written as the bf16 param and the residual: its bit pattern rounded to 24 bits (q), the
// upper 16 of those rounded to nearest (ties up) as the param, the rest (in [-128, 127]) as the
// residual. Never clamped; a NaN is the quiet NaN with residual 0.
__host__ __device__ inline void split_store(float w, uint16_t* param, int8_t* residual) {
  uint32_t bits;
  memcpy(&bits, &w, 4);
  const int32_t q = static_cast<int32_t>((bits + 128u) >> 8);
  const int32_t high = static_cast<int32_t>((bits + 0x8080u) >> 16);  // (q + 128) >> 8
  const bool nan = w != w;
  *residual = nan ? int8_t(0) : static_cast<int8_t>(q - (high << 8));
  *param = nan ? uint16_t(0x7FC0) : static_cast<uint16_t>(high);
}

// Where a tensor's float32 weight lives: the param itself, an fp32 master copy beside it, or (bf16
// params) the param and its int8 residual. Null pointers for what the tensor does not have.
template <typename P> struct Weights {
  typename P::T* param;
  float* master;
  int8_t* residual;
  __host__ __device__ float load(int64_t i) const {
    if (master != nullptr) return master[i];
    if constexpr (std::is_same_v<P, BF16>) {
      if (residual != nullptr) return split_weight(param[i], residual[i]);
    }
    return P::load(param[i]);
  }
  // `index`: the element's offset in its tensor (the stochastic-rounding stream's index).
  __host__ __device__ void store(int64_t i, float w, bool stochastic, uint32_t key, int64_t index) const {
    if (master != nullptr) master[i] = w;
    if constexpr (std::is_same_v<P, BF16>) {
      if (residual != nullptr) {
        split_store(w, param + i, residual + i);
      } else {
        param[i] = stochastic ? BF16::store_stochastic(w, key, index) : BF16::store(w);
      }
    } else {
      param[i] = P::store(w);
    }
  }
};

template <typename P>
__host__ __device__ Weights<P> weights_at(const int64_t* table, int64_t num_tensors, int64_t t, int64_t start) {
  return Weights<P>{at_chunk<typename P::T>(table, kParam, num_tensors, t, start),
                    at_chunk<float>(table, kMaster, num_tensors, t, start),
                    at_chunk<int8_t>(table, kMasterResidual, num_tensors, t, start)};
}

// Buckets whose tensors are not all stored alike (fp32 master, split master, stochastic rounding,
// moments or grads in another dtype than the param): scalar accesses, maths in float, one
// rounding per stored value; the same function runs on the host for tests.
template <typename P, typename G, typename S, typename Rule>
__host__ __device__ void mixed_element(const Coefs<float>& k, const Weights<P>& w, const typename G::T* grad,
                                       typename S::T* exp_avg, typename S::T* exp_avg_sq, typename S::T* max_sq,
                                       int64_t i, bool stochastic, uint32_t key, int64_t index) {
  float p = w.load(i);
  float m = exp_avg != nullptr ? S::load(exp_avg[i]) : 0.0f;
  float v = Rule::kSecondMoment ? S::load(exp_avg_sq[i]) : 0.0f;
  float v_max = max_sq != nullptr ? S::load(max_sq[i]) : 0.0f;
  Rule::apply(k, p, G::load(grad[i]), m, v, max_sq != nullptr ? &v_max : nullptr);
  w.store(i, p, stochastic, key, index);
  if (exp_avg != nullptr) exp_avg[i] = S::store(m);
  if (Rule::kSecondMoment) exp_avg_sq[i] = S::store(v);
  if (max_sq != nullptr) max_sq[i] = S::store(v_max);
}

// Calls body(i, index) for the elements of one chunk of a mixed bucket, after fetching its tensors.
template <typename P, typename G, typename S, typename Rule>
struct MixedChunk {
  Weights<P> w;
  const typename G::T* grad;
  typename S::T *exp_avg, *exp_avg_sq, *max_sq;
  Coefs<float> k;
  uint32_t key;
  int64_t start, length;
  __host__ __device__ MixedChunk(const int64_t* tensor_table, int64_t num_tensors, const Chunk& chunk,
                                 const double* coef)
      : w(weights_at<P>(tensor_table, num_tensors, chunk.tensor, chunk.start)),
        grad(at_chunk<const typename G::T>(tensor_table, kGrad, num_tensors, chunk.tensor, chunk.start)),
        exp_avg(at_chunk<typename S::T>(tensor_table, kExpAvg, num_tensors, chunk.tensor, chunk.start)),
        exp_avg_sq(Rule::kSecondMoment
                       ? at_chunk<typename S::T>(tensor_table, kExpAvgSq, num_tensors, chunk.tensor, chunk.start)
                       : nullptr),
        max_sq(at_chunk<typename S::T>(tensor_table, kMaxExpAvgSq, num_tensors, chunk.tensor, chunk.start)),
        k(coef, num_tensors, chunk.tensor),
        key(static_cast<uint32_t>(coef[kSrKey * num_tensors + chunk.tensor])),
        start(chunk.start),
        length(chunk.length) {}
  __host__ __device__ void element(int64_t i, bool stochastic) const {
    mixed_element<P, G, S, Rule>(k, w, grad, exp_avg, exp_avg_sq, max_sq, i, stochastic, key, start + i);
  }
};

template <typename P, typename G, typename S, typename Rule>
__global__ void mixed_update_kernel(const int64_t* tensor_table, int64_t num_tensors, const int64_t* chunk_table,
                                    int64_t num_chunks, int64_t chunk_begin, int64_t chunk_count, int64_t chunk_size,
                                    const double* coef, const float* found_inf, bool stochastic) {
  if (skipped(found_inf)) return;
  for (int64_t c = chunk_begin + blockIdx.x; c < chunk_begin + chunk_count; c += gridDim.x) {
    const Chunk chunk = chunk_at(tensor_table, num_tensors, chunk_table, num_chunks, c, chunk_size);
    const MixedChunk<P, G, S, Rule> work(tensor_table, num_tensors, chunk, coef);
    for (int64_t i = threadIdx.x; i < chunk.length; i += blockDim.x) work.element(i, stochastic);
  }
}

// ----- 8-bit moments (fusedlr/_quantized.py): one warp per quantisation block ----------------------
// A warp decodes, updates and keeps in registers the 256 moments of one block (lane l holds its
// elements l, l + 32, ..., l + 224: every access coalesced), takes the block's maxima with shuffles
// and encodes the block with them: one pass, no shared memory, no barrier. The lane functions run
// on the host too, where a loop plays the 32 lanes (the tests without a GPU).

constexpr int kLanes = 32;
constexpr int kPerLane = kQuantBlock / kLanes;
static_assert(kThreads % kLanes == 0 && kQuantBlock % kLanes == 0, "warps must tile blocks");

// IEEE products and sums that are never contracted into a fused multiply-add: the codes are then
// the reference's (PyTorch's separate roundings) bit for bit.
__host__ __device__ inline float mul_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
__host__ __device__ inline float add_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

// max that keeps a NaN (as torch's amax): a NaN moment poisons its block's scale, visibly.
__host__ __device__ inline float nan_max(float a, float b) { return a != a ? a : (b != b ? b : fmaxf(a, b)); }

constexpr float kInverseSigned = static_cast<float>(1.0 / kSignedLevels);
constexpr float kInverseUnsigned = static_cast<float>(1.0 / kUnsignedLevels);
constexpr float kSignedSlack = 1.0f / static_cast<float>(1 << kSignedSlackLog2);

__host__ __device__ inline float decode_signed(int8_t code, float scale) {
  const float y = mul_rn(static_cast<float>(code), kInverseSigned);
  return mul_rn(y / (2.0f - fabsf(y)), scale);
}

__host__ __device__ inline float decode_unsigned(uint8_t code, float scale) {
  const float r = mul_rn(scale, mul_rn(static_cast<float>(code), kInverseUnsigned));
  return mul_rn(r, r);
}

// To nearest, or toward zero where the moment only decays (AdamW, a zero gradient:
// fusedlr/_quantized.py says why: it must reach code 0).
__host__ __device__ inline int8_t encode_signed(float value, float scale, bool decaying) {
  const float x = value / (scale > 0.0f ? scale : 1.0f);
  const float y = mul_rn(x, 2.0f) / add_rn(fabsf(x), 1.0f);
  const float offset = decaying ? kSignedSlack : 0.5f;
  const float magnitude = floorf(add_rn(mul_rn(fabsf(y), static_cast<float>(kSignedLevels)), offset));
  const float code = y < 0.0f ? -magnitude : magnitude;
  return code == code ? static_cast<int8_t>(static_cast<int>(code)) : int8_t(0);
}

__host__ __device__ inline uint8_t encode_unsigned(float root, float scale) {
  float code = floorf(add_rn(mul_rn(root / (scale > 0.0f ? scale : 1.0f), static_cast<float>(kUnsignedLevels)), 0.5f));
  if (code == 0.0f && root > 0.0f) code = 1.0f;  // never 0 for v > 0: the update would be m / eps
  return code == code ? static_cast<uint8_t>(static_cast<int>(code)) : uint8_t(0);
}

// One tensor of a quantised bucket, addressed from its element 0 (blocks are counted from there).
template <typename P, typename G> struct QuantizedTensor {
  Weights<P> w;
  const typename G::T* grad;
  int8_t* m_codes;
  float* m_scales;
  uint8_t* v_codes;  // null for LION
  float* v_scales;
  __host__ __device__ QuantizedTensor(const int64_t* table, int64_t num_tensors, int64_t t)
      : w(weights_at<P>(table, num_tensors, t, 0)),
        grad(address<const typename G::T>(table, kGrad, num_tensors, t)),
        m_codes(address<int8_t>(table, kExpAvg, num_tensors, t)),
        m_scales(address<float>(table, kExpAvgScales, num_tensors, t)),
        v_codes(address<uint8_t>(table, kExpAvgSq, num_tensors, t)),
        v_scales(address<float>(table, kExpAvgSqScales, num_tensors, t)) {}
};

// Phase 1 of one lane on the block of elements [begin, begin + kQuantBlock) (begin a multiple of
// kQuantBlock), elements from `end` on excluded (past its chunk): decode, update, write the weight;
// the new moments stay in m and r (r: sqrt of the second moment), and the lane's maxima.
template <typename P, typename G, typename Rule>
__host__ __device__ void quantized_lane_update(const Coefs<float>& k, const QuantizedTensor<P, G>& x, int64_t begin,
                                               int64_t end, int lane, bool stochastic, uint32_t key, float* m,
                                               float* r, float& max_m, float& max_r, uint32_t& decaying) {
  const int64_t block = begin / kQuantBlock;
  const float m_scale = x.m_scales[block];
  const float v_scale = Rule::kSecondMoment ? x.v_scales[block] : 0.0f;
  max_m = 0.0f;
  max_r = 0.0f;
  decaying = 0u;  // bit j: element j's first moment only decays (encoded toward zero)
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    const int64_t i = begin + j * kLanes + lane;
    m[j] = 0.0f;
    r[j] = 0.0f;
    if (i >= end) continue;
    float p = x.w.load(i);
    float mj = decode_signed(x.m_codes[i], m_scale);
    float vj = Rule::kSecondMoment ? decode_unsigned(x.v_codes[i], v_scale) : 0.0f;
    const float g = G::load(x.grad[i]);
    Rule::apply(k, p, g, mj, vj, static_cast<float*>(nullptr));
    x.w.store(i, p, stochastic, key, i);
    m[j] = mj;
    // AdamW's (LION: to nearest): the gradient the update used (unscaled, clipped) is zero, as the
    // reference and Triton decide; a tiny raw gradient clipped to 0 counts as zero.
    if (Rule::kSecondMoment && k.effective_grad(g) == 0.0f) decaying |= 1u << j;
    max_m = nan_max(max_m, fabsf(mj));
    if (Rule::kSecondMoment) {
      r[j] = sqrtf(vj);  // IEEE square root (nvcc's default -prec-sqrt=true)
      max_r = nan_max(max_r, r[j]);
    }
  }
}

// Phase 2 of one lane, with the block's maxima: the codes, and (lane 0) the scales.
template <typename P, typename G, typename Rule>
__host__ __device__ void quantized_lane_store(const QuantizedTensor<P, G>& x, int64_t begin, int64_t end, int lane,
                                              const float* m, const float* r, float scale_m, float scale_r,
                                              uint32_t decaying) {
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    const int64_t i = begin + j * kLanes + lane;
    if (i >= end) continue;
    x.m_codes[i] = encode_signed(m[j], scale_m, (decaying >> j) & 1u);
    if (Rule::kSecondMoment) x.v_codes[i] = encode_unsigned(r[j], scale_r);
  }
  if (lane == 0) {
    x.m_scales[begin / kQuantBlock] = scale_m;
    if (Rule::kSecondMoment) x.v_scales[begin / kQuantBlock] = scale_r;
  }
}

template <typename P, typename G, typename Rule>
__global__ void quantized_update_kernel(const int64_t* tensor_table, int64_t num_tensors, const int64_t* chunk_table,
                                        int64_t num_chunks, int64_t chunk_begin, int64_t chunk_count,
                                        int64_t chunk_size, const double* coef, const float* found_inf,
                                        bool stochastic) {
  if (skipped(found_inf)) return;
  const int lane = static_cast<int>(threadIdx.x) % kLanes;
  const int64_t warp = threadIdx.x / kLanes, warps = blockDim.x / kLanes;
  for (int64_t c = chunk_begin + blockIdx.x; c < chunk_begin + chunk_count; c += gridDim.x) {
    const Chunk chunk = chunk_at(tensor_table, num_tensors, chunk_table, num_chunks, c, chunk_size);
    const QuantizedTensor<P, G> x(tensor_table, num_tensors, chunk.tensor);
    const Coefs<float> k(coef, num_tensors, chunk.tensor);
    const uint32_t key = static_cast<uint32_t>(coef[kSrKey * num_tensors + chunk.tensor]);
    const int64_t end = chunk.start + chunk.length;
    // Warp-uniform bounds: every lane of a warp takes part in each block's shuffles.
    for (int64_t begin = chunk.start + warp * kQuantBlock; begin < end; begin += warps * kQuantBlock) {
      float m[kPerLane], r[kPerLane], max_m, max_r;
      uint32_t decaying;
      quantized_lane_update<P, G, Rule>(k, x, begin, end, lane, stochastic, key, m, r, max_m, max_r, decaying);
#pragma unroll
      for (int offset = kLanes / 2; offset > 0; offset /= 2) {
        max_m = nan_max(max_m, __shfl_xor_sync(0xFFFFFFFFu, max_m, offset));
        if (Rule::kSecondMoment) max_r = nan_max(max_r, __shfl_xor_sync(0xFFFFFFFFu, max_r, offset));
      }
      quantized_lane_store<P, G, Rule>(x, begin, end, lane, m, r, max_m, max_r, decaying);
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

// Calls launch(Rule{}) for a rule code (fusedlr/_plan.py RULES).
template <typename Launch> void dispatch_rule(int rule, Launch&& launch) {
  switch (rule) {
    case kRuleAdamW: launch(AdamW{}); break;
    case kRuleLion: launch(Lion{}); break;
    case kRuleSgd: launch(Sgd{}); break;
    case kRuleScheduleFree: launch(ScheduleFree{}); break;
    default: throw std::invalid_argument("fusedlr: unknown rule code " + std::to_string(rule));
  }
}

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

// Calls launch(P{}, G{}, Rule{}) for a bucket with 8-bit moments: AdamW or LION (the rules with
// 8-bit moments), fp32/bf16/fp16 params, grads in the param's dtype or fp32. The quantisation
// blocks must tile the chunks.
template <typename Launch> void dispatch_quantized(int rule, int p, int g, int64_t chunk_size, Launch&& launch) {
  if (chunk_size % kQuantBlock != 0) {
    throw std::invalid_argument("fusedlr: the chunk size " + std::to_string(chunk_size) +
                                " is not a multiple of the 8-bit quantisation block (" + std::to_string(kQuantBlock) +
                                ")");
  }
  if (rule != kRuleAdamW && rule != kRuleLion) {
    throw std::invalid_argument("fusedlr: 8-bit moments are AdamW's and LION's; rule code " + std::to_string(rule));
  }
  const auto with_rule = [&](auto p_tag, auto g_tag) {
    if (rule == kRuleAdamW) launch(p_tag, g_tag, AdamW{});
    else launch(p_tag, g_tag, Lion{});
  };
  if (p == kFloat32 && g == kFloat32) return with_rule(F32{}, F32{});
  if (p == kBFloat16 && g == kBFloat16) return with_rule(BF16{}, BF16{});
  if (p == kBFloat16 && g == kFloat32) return with_rule(BF16{}, F32{});
  if (p == kFloat16 && g == kFloat16) return with_rule(F16{}, F16{});
  if (p == kFloat16 && g == kFloat32) return with_rule(F16{}, F32{});
  throw std::invalid_argument("fusedlr: no 8-bit-moment kernel for param/grad dtype codes " + std::to_string(p) + "/" +
                              std::to_string(g));
}

void check_rule_tables(int rule, uint64_t group_sums) {
  if (rule < 0 || rule >= kNumRules) throw std::invalid_argument("fusedlr: unknown rule code " + std::to_string(rule));
  if (rule == kRuleScheduleFree && group_sums == 0) {
    throw std::invalid_argument("fusedlr: the schedule-free finalize needs the group sums table");
  }
}

FinalizeTables finalize_tables(uint64_t tensor_table, int64_t num_tensors, uint64_t hyper, int64_t num_groups,
                               uint64_t grad_sumsq, uint64_t param_sumsq, uint64_t coef, uint64_t group_sums) {
  return FinalizeTables{as_ptr<int64_t>(tensor_table), num_tensors, as_ptr<double>(hyper), num_groups,
                        as_ptr<double>(grad_sumsq), as_ptr<double>(param_sumsq), as_mut<double>(coef),
                        as_mut<double>(group_sums)};
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
              bool has_clip, bool has_agc, int rule, uint64_t group_sums, uint64_t grad_scale, uint64_t found_inf,
              uint64_t status, uint64_t skipped_steps, bool skip_nonfinite, bool has_clip_value, uint64_t stream) {
  check_rule_tables(rule, group_sums);
  finalize_kernel<<<1, kFinalizeThreads, 0, as_stream(stream)>>>(
      finalize_tables(tensor_table, num_tensors, hyper, num_groups, grad_sumsq, param_sumsq, coef, group_sums),
      FinalizeFlags{has_norms, has_clip, has_agc, skip_nonfinite, has_clip_value, rule}, as_mut<int64_t>(counter),
      as_mut<float>(norm_out), as_ptr<float>(grad_scale), as_ptr<float>(found_inf), as_mut<float>(status),
      as_mut<int64_t>(skipped_steps));
  check(cudaGetLastError(), "finalize_kernel");
}

void update(int rule, int dtype, uint64_t tensor_table, int64_t num_tensors, uint64_t chunk_table, int64_t num_chunks,
            int64_t chunk_begin, int64_t chunk_count, int64_t chunk_size, uint64_t coef, uint64_t found_inf,
            uint64_t stream) {
  dispatch_rule(rule, [&](auto rule_tag) {
    dispatch(dtype, [&](auto tag) {
      if (chunk_count == 0) return;
      update_kernel<decltype(tag), decltype(rule_tag)><<<chunk_grid(chunk_count), kThreads, 0, as_stream(stream)>>>(
          as_ptr<int64_t>(tensor_table), num_tensors, as_ptr<int64_t>(chunk_table), num_chunks, chunk_begin,
          chunk_count, chunk_size, as_ptr<double>(coef), as_ptr<float>(found_inf));
    });
  });
  check(cudaGetLastError(), "update_kernel");
}

void mixed_update(int rule, int param_dtype, int grad_dtype, int state_dtype, uint64_t tensor_table,
                  int64_t num_tensors, uint64_t chunk_table, int64_t num_chunks, int64_t chunk_begin,
                  int64_t chunk_count, int64_t chunk_size, uint64_t coef, uint64_t found_inf, bool stochastic,
                  uint64_t stream) {
  dispatch_rule(rule, [&](auto rule_tag) {
    dispatch_mixed(param_dtype, grad_dtype, state_dtype, [&](auto p, auto g, auto s) {
      if (chunk_count == 0) return;
      mixed_update_kernel<decltype(p), decltype(g), decltype(s), decltype(rule_tag)>
          <<<chunk_grid(chunk_count), kThreads, 0, as_stream(stream)>>>(
              as_ptr<int64_t>(tensor_table), num_tensors, as_ptr<int64_t>(chunk_table), num_chunks, chunk_begin,
              chunk_count, chunk_size, as_ptr<double>(coef), as_ptr<float>(found_inf), stochastic);
    });
  });
  check(cudaGetLastError(), "mixed_update_kernel");
}

void quantized_update(int rule, int param_dtype, int grad_dtype, uint64_t tensor_table, int64_t num_tensors,
                      uint64_t chunk_table, int64_t num_chunks, int64_t chunk_begin, int64_t chunk_count,
                      int64_t chunk_size, uint64_t coef, uint64_t found_inf, bool stochastic, uint64_t stream) {
  dispatch_quantized(rule, param_dtype, grad_dtype, chunk_size, [&](auto p, auto g, auto rule_tag) {
    if (chunk_count == 0) return;
    quantized_update_kernel<decltype(p), decltype(g), decltype(rule_tag)>
        <<<chunk_grid(chunk_count), kThreads, 0, as_stream(stream)>>>(
            as_ptr<int64_t>(tensor_table), num_tensors, as_ptr<int64_t>(chunk_table), num_chunks, chunk_begin,
            chunk_count, chunk_size, as_ptr<double>(coef), as_ptr<float>(found_inf), stochastic);
  });
  check(cudaGetLastError(), "quantized_update_kernel");
}

void mixed_update_on_cpu(int rule, int param_dtype, int grad_dtype, int state_dtype, uint64_t param,
                         uint64_t master, uint64_t grad, uint64_t exp_avg, uint64_t exp_avg_sq, uint64_t max_sq,
                         int64_t numel, int64_t first_index, const double* coef, bool stochastic) {
  dispatch_rule(rule, [&](auto rule_tag) {
    dispatch_mixed(param_dtype, grad_dtype, state_dtype, [&](auto p, auto g, auto s) {
      using P = decltype(p);
      using S = decltype(s);
      const Coefs<float> k(coef, 1, 0);
      const uint32_t key = static_cast<uint32_t>(coef[kSrKey]);
      const Weights<P> w{as_mut<typename P::T>(param), as_mut<float>(master), nullptr};
      for (int64_t i = 0; i < numel; ++i) {
        mixed_element<P, decltype(g), S, decltype(rule_tag)>(
            k, w, as_ptr<typename decltype(g)::T>(grad), as_mut<typename S::T>(exp_avg),
            as_mut<typename S::T>(exp_avg_sq), as_mut<typename S::T>(max_sq), i, stochastic, key, first_index + i);
      }
    });
  });
}

void run_schedule_program(const double* program, int num_instructions, int scale_register, int offset_register,
                          double k, double* scale, double* offset) {
  run_program(program, num_instructions, scale_register, offset_register, k, scale, offset);
}

int cuda_runtime_version() { return CUDART_VERSION; }

std::vector<int> compiled_archs() { return {__CUDA_ARCH_LIST__}; }

// Every kernel of this file sits in one fatbinary, so whether one loads answers for all of them.
KernelProbe probe_kernels() {
  cudaFuncAttributes attributes{};
  const cudaError_t status = cudaFuncGetAttributes(&attributes, finalize_kernel);
  if (status != cudaSuccess) {
    cudaGetLastError();  // not sticky: torch's next error check must not see it
    return {static_cast<int>(status), std::string(cudaGetErrorName(status)) + ": " + cudaGetErrorString(status), 0,
            0};
  }
  return {0, "", attributes.binaryVersion, attributes.ptxVersion};
}

// ----- the host twins: the launches' code on host memory, one thread -------------------------------

namespace host {
namespace {

template <typename Body>
void for_each_chunk(uint64_t tensor_table, int64_t num_tensors, uint64_t chunk_table, int64_t num_chunks,
                    int64_t chunk_begin, int64_t chunk_count, int64_t chunk_size, uint64_t found_inf, Body&& body) {
  if (skipped(as_ptr<float>(found_inf))) return;
  for (int64_t c = chunk_begin; c < chunk_begin + chunk_count; ++c) {
    body(chunk_at(as_ptr<int64_t>(tensor_table), num_tensors, as_ptr<int64_t>(chunk_table), num_chunks, c,
                  chunk_size));
  }
}

template <typename Acc> Acc load_as(int dtype, const void* base, int64_t i) {
  switch (dtype) {
    case kFloat32: return static_cast<Acc>(static_cast<const float*>(base)[i]);
    case kFloat64: return static_cast<Acc>(static_cast<const double*>(base)[i]);
    case kFloat16: return static_cast<Acc>(F16::load(static_cast<const __half*>(base)[i]));
    default: return static_cast<Acc>(BF16::load(static_cast<const uint16_t*>(base)[i]));
  }
}

template <typename Acc>
void chunk_sumsq(int dtype, int grad_dtype, uint64_t tensor_table, int64_t num_tensors, uint64_t chunk_table,
                 int64_t num_chunks, int64_t chunk_begin, int64_t chunk_count, int64_t chunk_size,
                 uint64_t partial_grad, uint64_t partial_param, bool with_param, uint64_t found_inf, uint64_t hyper,
                 int64_t num_groups, uint64_t grad_scale, bool has_clip_value) {
  const ValueClip<Acc> value_clip(has_clip_value, as_ptr<double>(hyper), num_groups, as_ptr<float>(grad_scale));
  const int64_t* table = as_ptr<int64_t>(tensor_table);
  int64_t c = chunk_begin;
  for_each_chunk(tensor_table, num_tensors, chunk_table, num_chunks, chunk_begin, chunk_count, chunk_size, found_inf,
                 [&](const Chunk& chunk) {
                   const void* grad = address<const char>(table, kGrad, num_tensors, chunk.tensor);
                   const void* param = address<const char>(table, kParam, num_tensors, chunk.tensor);
                   double acc_grad = 0.0, acc_param = 0.0;
                   for (int64_t i = chunk.start; i < chunk.start + chunk.length; ++i) {
                     const Acc g = value_clip(load_as<Acc>(grad_dtype, grad, i));
                     acc_grad += static_cast<double>(g * g);
                     if (with_param) {
                       const Acc p = load_as<Acc>(dtype, param, i);
                       acc_param += static_cast<double>(p * p);
                     }
                   }
                   as_mut<double>(partial_grad)[c] = acc_grad;
                   if (with_param) as_mut<double>(partial_param)[c] = acc_param;
                   ++c;
                 });
}

}  // namespace

void grad_sumsq(int dtype, int grad_dtype, uint64_t tensor_table, int64_t num_tensors, uint64_t chunk_table,
                int64_t num_chunks, int64_t chunk_begin, int64_t chunk_count, int64_t chunk_size,
                uint64_t partial_grad, uint64_t partial_param, bool with_param, uint64_t found_inf, uint64_t hyper,
                int64_t num_groups, uint64_t grad_scale, bool has_clip_value, uint64_t) {
  if (dtype == kFloat64) {
    chunk_sumsq<double>(dtype, grad_dtype, tensor_table, num_tensors, chunk_table, num_chunks, chunk_begin,
                        chunk_count, chunk_size, partial_grad, partial_param, with_param, found_inf, hyper,
                        num_groups, grad_scale, has_clip_value);
  } else {
    chunk_sumsq<float>(dtype, grad_dtype, tensor_table, num_tensors, chunk_table, num_chunks, chunk_begin,
                       chunk_count, chunk_size, partial_grad, partial_param, with_param, found_inf, hyper,
                       num_groups, grad_scale, has_clip_value);
  }
}

void tensor_sumsq(uint64_t tensor_table, int64_t num_tensors, uint64_t partial_grad, uint64_t partial_param,
                  uint64_t grad_sumsq, uint64_t param_sumsq, bool with_param, uint64_t found_inf, uint64_t) {
  if (skipped(as_ptr<float>(found_inf))) return;
  const int64_t* table = as_ptr<int64_t>(tensor_table);
  for (int64_t t = 0; t < num_tensors; ++t) {
    double acc_grad = 0.0, acc_param = 0.0;
    for (int64_t i = 0; i < table[kNumChunks * num_tensors + t]; ++i) {
      const int64_t c = table[kChunkBegin * num_tensors + t] + i;
      acc_grad += as_ptr<double>(partial_grad)[c];
      if (with_param) acc_param += as_ptr<double>(partial_param)[c];
    }
    as_mut<double>(grad_sumsq)[t] = acc_grad;
    if (with_param) as_mut<double>(param_sumsq)[t] = acc_param;
  }
}

void finalize(uint64_t tensor_table, int64_t num_tensors, uint64_t hyper, int64_t num_groups, uint64_t grad_sumsq,
              uint64_t param_sumsq, uint64_t coef, uint64_t counter, uint64_t norm_out, bool has_norms,
              bool has_clip, bool has_agc, int rule, uint64_t group_sums, uint64_t grad_scale, uint64_t found_inf,
              uint64_t status, uint64_t skipped_steps, bool skip_nonfinite, bool has_clip_value, uint64_t) {
  check_rule_tables(rule, group_sums);
  double broadcast[2];
  finalize_body(HostThread{},
                finalize_tables(tensor_table, num_tensors, hyper, num_groups, grad_sumsq, param_sumsq, coef,
                                group_sums),
                FinalizeFlags{has_norms, has_clip, has_agc, skip_nonfinite, has_clip_value, rule},
                as_mut<int64_t>(counter), as_mut<float>(norm_out), as_ptr<float>(grad_scale), as_ptr<float>(found_inf),
                as_mut<float>(status), as_mut<int64_t>(skipped_steps), broadcast);
}

void update(int rule, int dtype, uint64_t tensor_table, int64_t num_tensors, uint64_t chunk_table, int64_t num_chunks,
            int64_t chunk_begin, int64_t chunk_count, int64_t chunk_size, uint64_t coef, uint64_t found_inf,
            uint64_t) {
  dispatch_rule(rule, [&](auto rule_tag) {
    dispatch(dtype, [&](auto tag) {
      using T = decltype(tag);
      using Rule = decltype(rule_tag);
      const int64_t* table = as_ptr<int64_t>(tensor_table);
      for_each_chunk(tensor_table, num_tensors, chunk_table, num_chunks, chunk_begin, chunk_count, chunk_size,
                     found_inf, [&](const Chunk& chunk) {
                       const int64_t t = chunk.tensor;
                       const Coefs<typename Storage<T>::Acc> k(as_ptr<double>(coef), num_tensors, t);
                       T* exp_avg_sq = Rule::kSecondMoment ? at_chunk<T>(table, kExpAvgSq, num_tensors, t, chunk.start)
                                                           : nullptr;
                       for (int64_t i = 0; i < chunk.length; ++i) {
                         update_element<T, Rule>(k, at_chunk<T>(table, kParam, num_tensors, t, chunk.start),
                                                 at_chunk<const T>(table, kGrad, num_tensors, t, chunk.start),
                                                 at_chunk<T>(table, kExpAvg, num_tensors, t, chunk.start), exp_avg_sq,
                                                 at_chunk<T>(table, kMaxExpAvgSq, num_tensors, t, chunk.start), i);
                       }
                     });
    });
  });
}

void mixed_update(int rule, int param_dtype, int grad_dtype, int state_dtype, uint64_t tensor_table,
                  int64_t num_tensors, uint64_t chunk_table, int64_t num_chunks, int64_t chunk_begin,
                  int64_t chunk_count, int64_t chunk_size, uint64_t coef, uint64_t found_inf, bool stochastic,
                  uint64_t) {
  dispatch_rule(rule, [&](auto rule_tag) {
    dispatch_mixed(param_dtype, grad_dtype, state_dtype, [&](auto p, auto g, auto s) {
      for_each_chunk(tensor_table, num_tensors, chunk_table, num_chunks, chunk_begin, chunk_count, chunk_size,
                     found_inf, [&](const Chunk& chunk) {
                       const MixedChunk<decltype(p), decltype(g), decltype(s), decltype(rule_tag)> work(
                           as_ptr<int64_t>(tensor_table), num_tensors, chunk, as_ptr<double>(coef));
                       for (int64_t i = 0; i < chunk.length; ++i) work.element(i, stochastic);
                     });
    });
  });
}

void quantized_update(int rule, int param_dtype, int grad_dtype, uint64_t tensor_table, int64_t num_tensors,
                      uint64_t chunk_table, int64_t num_chunks, int64_t chunk_begin, int64_t chunk_count,
                      int64_t chunk_size, uint64_t coef, uint64_t found_inf, bool stochastic, uint64_t) {
  dispatch_quantized(rule, param_dtype, grad_dtype, chunk_size, [&](auto p, auto g, auto rule_tag) {
    using P = decltype(p);
    using G = decltype(g);
    using Rule = decltype(rule_tag);
    for_each_chunk(tensor_table, num_tensors, chunk_table, num_chunks, chunk_begin, chunk_count, chunk_size,
                   found_inf, [&](const Chunk& chunk) {
                     const QuantizedTensor<P, G> x(as_ptr<int64_t>(tensor_table), num_tensors, chunk.tensor);
                     const Coefs<float> k(as_ptr<double>(coef), num_tensors, chunk.tensor);
                     const uint32_t key = static_cast<uint32_t>(as_ptr<double>(coef)[kSrKey * num_tensors + chunk.tensor]);
                     const int64_t end = chunk.start + chunk.length;
                     for (int64_t begin = chunk.start; begin < end; begin += kQuantBlock) {
                       // The warp's 32 lanes, one after the other; then the block's maxima.
                       float m[kLanes][kPerLane], r[kLanes][kPerLane], max_m[kLanes], max_r[kLanes];
                       uint32_t decaying[kLanes];
                       for (int lane = 0; lane < kLanes; ++lane) {
                         quantized_lane_update<P, G, Rule>(k, x, begin, end, lane, stochastic, key, m[lane], r[lane],
                                                           max_m[lane], max_r[lane], decaying[lane]);
                       }
                       float scale_m = max_m[0], scale_r = max_r[0];
                       for (int lane = 1; lane < kLanes; ++lane) {
                         scale_m = nan_max(scale_m, max_m[lane]);
                         scale_r = nan_max(scale_r, max_r[lane]);
                       }
                       for (int lane = 0; lane < kLanes; ++lane) {
                         quantized_lane_store<P, G, Rule>(x, begin, end, lane, m[lane], r[lane], scale_m, scale_r,
                                                          decaying[lane]);
                       }
                     }
                   });
  });
}

}  // namespace host

}  // namespace fusedlr

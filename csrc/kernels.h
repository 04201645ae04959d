// The host API of the CUDA backend: plain integers in, nothing returned. Addresses are device
// pointers as integers, `stream` is a cudaStream_t as an integer (torch's current stream), and
// `found_inf` is 0 or the address of a float that, when nonzero, makes every kernel return at
// once (the step is skipped on the device). No torch types anywhere: one build serves every
// torch version. Every launch is checked; a CUDA error is thrown as std::runtime_error.
#pragma once

#include <cstdint>

namespace fusedlr {

// `grad_dtype` differs from `dtype` only for float32 grads beside bf16/fp16 params. With
// `has_clip_value`, the sums are of the grads unscaled (`grad_scale`, a float, when not 0) and
// clamped to the clip_value slot of `hyper` (which has `num_groups` group columns).
void grad_sumsq(int dtype, int grad_dtype, uint64_t tensor_table, int64_t num_tensors, uint64_t chunk_table,
                int64_t num_chunks, int64_t chunk_begin, int64_t chunk_count, int64_t chunk_size,
                uint64_t partial_grad, uint64_t partial_param, bool with_param, uint64_t found_inf, uint64_t hyper,
                int64_t num_groups, uint64_t grad_scale, bool has_clip_value, uint64_t stream);

void tensor_sumsq(uint64_t tensor_table, int64_t num_tensors, uint64_t partial_grad, uint64_t partial_param,
                  uint64_t grad_sumsq, uint64_t param_sumsq, bool with_param, uint64_t found_inf, uint64_t stream);

// The finalize decides whether the step is skipped (found_inf nonzero, or skip_nonfinite and a
// non-finite global norm), writes that to `status` (a float) and adds it to `skipped_steps`
// (an int64); the update launches then receive `status` as their found_inf. `grad_scale`, when
// not 0, is a GradScaler's loss scale (a float), undone in the norms and the update.
// `has_clip_value`: the norm pass summed unscaled, clamped grads; the updates unscale and clamp
// each element (the kUnscale and kClipValueCoef columns).
void finalize(uint64_t tensor_table, int64_t num_tensors, uint64_t hyper, int64_t num_groups, uint64_t grad_sumsq,
              uint64_t param_sumsq, uint64_t coef, uint64_t counter, uint64_t norm_out, bool has_norms,
              bool has_clip, bool has_agc, bool is_adamw, uint64_t grad_scale, uint64_t found_inf, uint64_t status,
              uint64_t skipped_steps, bool skip_nonfinite, bool has_clip_value, uint64_t stream);

void adamw_update(int dtype, uint64_t tensor_table, int64_t num_tensors, uint64_t chunk_table, int64_t num_chunks,
                  int64_t chunk_begin, int64_t chunk_count, int64_t chunk_size, uint64_t coef, uint64_t found_inf,
                  uint64_t stream);

void lion_update(int dtype, uint64_t tensor_table, int64_t num_tensors, uint64_t chunk_table, int64_t num_chunks,
                 int64_t chunk_begin, int64_t chunk_count, int64_t chunk_size, uint64_t coef, uint64_t found_inf,
                 uint64_t stream);

// A bucket whose tensors are not all stored in the param's dtype: an fp32 master copy (the
// tensor table's master column, 0 where none), moments in `state_dtype`, grads in `grad_dtype`,
// and for bfloat16 params without a master optionally stochastic rounding keyed by the
// finalize's sr_key column. Scalar accesses; maths in float.
void mixed_update(bool is_adamw, int param_dtype, int grad_dtype, int state_dtype, uint64_t tensor_table,
                  int64_t num_tensors, uint64_t chunk_table, int64_t num_chunks, int64_t chunk_begin,
                  int64_t chunk_count, int64_t chunk_size, uint64_t coef, uint64_t found_inf, bool stochastic,
                  uint64_t stream);

// The element code of mixed_update run on host memory (CPU tensors' addresses), for tests
// without a GPU: `coef` holds the kCoefColumns values of one tensor; `first_index` is the
// offset of element 0 in its tensor (the stochastic-rounding stream's index).
void mixed_update_on_cpu(bool is_adamw, int param_dtype, int grad_dtype, int state_dtype, uint64_t param,
                         uint64_t master, uint64_t grad, uint64_t exp_avg, uint64_t exp_avg_sq, uint64_t max_sq,
                         int64_t numel, int64_t first_index, const double* coef, bool stochastic);

// CUDART_VERSION of the toolkit this was compiled with (e.g. 12040 for 12.4): the driver must
// support that CUDA major version.
int cuda_runtime_version();

// Runs a schedule program on the host side of this library (a CPU twin of the device
// interpreter, compiled from the same source), for tests without a GPU.
void run_schedule_program(const double* program, int num_instructions, int scale_register, int offset_register,
                          double k, double* scale, double* offset);

}  // namespace fusedlr

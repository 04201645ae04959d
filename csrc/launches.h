// The launch API of the CUDA backend, declared twice by kernels.h: in namespace fusedlr (the
// device launches) and in fusedlr::host (their host twins, the same signatures). No include guard
// on purpose, and no includes: kernels.h includes <cstdint> first.

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
// each element (the kUnscale and kClipValueCoef columns). `rule` is a RuleCode (layout.h);
// schedule-free's per-group sums (`group_sums`, float64 [kGroupSumRows, G]) advance here too.
void finalize(uint64_t tensor_table, int64_t num_tensors, uint64_t hyper, int64_t num_groups, uint64_t grad_sumsq,
              uint64_t param_sumsq, uint64_t coef, uint64_t counter, uint64_t norm_out, bool has_norms,
              bool has_clip, bool has_agc, int rule, uint64_t group_sums, uint64_t grad_scale, uint64_t found_inf,
              uint64_t status, uint64_t skipped_steps, bool skip_nonfinite, bool has_clip_value, uint64_t stream);

// A bucket whose tensors (param, grad, states) are all stored in one dtype: 16-byte accesses where
// a chunk's pointers allow, the rule's maths in float (double for double storage).
void update(int rule, int dtype, uint64_t tensor_table, int64_t num_tensors, uint64_t chunk_table, int64_t num_chunks,
            int64_t chunk_begin, int64_t chunk_count, int64_t chunk_size, uint64_t coef, uint64_t found_inf,
            uint64_t stream);

// A bucket whose tensors are not all stored in the param's dtype: an fp32 master copy (the
// tensor table's master column, 0 where none) or a split master (bf16 param + the int8 residuals
// of the master_residual column), moments in `state_dtype`, grads in `grad_dtype`, and for
// bfloat16 params without a master optionally stochastic rounding keyed by the finalize's sr_key
// column. Scalar accesses; maths in float.
void mixed_update(int rule, int param_dtype, int grad_dtype, int state_dtype, uint64_t tensor_table,
                  int64_t num_tensors, uint64_t chunk_table, int64_t num_chunks, int64_t chunk_begin,
                  int64_t chunk_count, int64_t chunk_size, uint64_t coef, uint64_t found_inf, bool stochastic,
                  uint64_t stream);

// A bucket with 8-bit moments (AdamW, LION): the exp_avg / exp_avg_sq columns hold int8 / uint8
// codes and the scale columns one float32 per kQuantBlock elements (fusedlr/_quantized.py); the
// weight as in mixed_update (plain, fp32 master, split master, stochastic rounding). One warp
// decodes, updates and encodes one block in registers. `chunk_size` must be a multiple of
// kQuantBlock.
void quantized_update(int rule, int param_dtype, int grad_dtype, uint64_t tensor_table, int64_t num_tensors,
                      uint64_t chunk_table, int64_t num_chunks, int64_t chunk_begin, int64_t chunk_count,
                      int64_t chunk_size, uint64_t coef, uint64_t found_inf, bool stochastic, uint64_t stream);

// The host API of the CUDA backend: plain integers in, nothing returned. Addresses are device
// pointers as integers, `stream` is a cudaStream_t as an integer (torch's current stream), and
// `found_inf` is 0 or the address of a float that, when nonzero, makes every kernel return at
// once (the step is skipped on the device). No torch types anywhere: one build serves every
// torch version. Every launch is checked; a CUDA error is thrown as std::runtime_error.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace fusedlr {

#include "launches.h"  // grad_sumsq, tensor_sumsq, finalize, update, mixed_update, quantized_update

// The element code of mixed_update run on host memory (CPU tensors' addresses), for tests
// without a GPU: `coef` holds the kCoefColumns values of one tensor; `first_index` is the
// offset of element 0 in its tensor (the stochastic-rounding stream's index).
void mixed_update_on_cpu(int rule, int param_dtype, int grad_dtype, int state_dtype, uint64_t param,
                         uint64_t master, uint64_t grad, uint64_t exp_avg, uint64_t exp_avg_sq, uint64_t max_sq,
                         int64_t numel, int64_t first_index, const double* coef, bool stochastic);

// CUDART_VERSION of the toolkit this was compiled with (e.g. 12040 for 12.4): the driver must
// support that CUDA major version.
int cuda_runtime_version();

// The compute capabilities this was compiled for (nvcc's __CUDA_ARCH_LIST__: 800, 860, ... 900).
std::vector<int> compiled_archs();

// Whether this build's kernels load on the current device with this driver: SASS for its
// architecture, or PTX the driver can JIT-compile (PTX from a newer CUDA than the driver's
// cannot). Loads one kernel (no launch, nothing written); a failure is cleared, not left sticky.
struct KernelProbe {
  int error;            // cudaError_t: 0 when the kernels load
  std::string message;  // "cudaErrorNoKernelImageForDevice: ..." when they do not
  int binary_version;   // the loaded code's architecture (90: sm_90 SASS), 0 on failure
  int ptx_version;      // the PTX's virtual architecture the build holds for it, 0 on failure
};
KernelProbe probe_kernels();

// Runs a schedule program on the host side of this library (a CPU twin of the device
// interpreter, compiled from the same source), for tests without a GPU.
void run_schedule_program(const double* program, int num_instructions, int scale_register, int offset_register,
                          double k, double* scale, double* offset);

// The host twins of the launches above, for tests without a GPU: the same signatures (the stream
// is ignored), every address a host one (CPU tensors), run by one thread over the same tables and
// chunks with the kernels' own element, lane and finalize functions (compiled for the host from
// the same source). The norm pass sums in another order than the device's tree.
namespace host {
#include "launches.h"
}  // namespace host

}  // namespace fusedlr

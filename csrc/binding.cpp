// fusedlr._C: a flat pybind11 binding of csrc/kernels.h. Plain integers only (addresses, sizes,
// the stream), no torch headers, so one build works with every torch version. C++ exceptions
// (CUDA errors among them) arrive in Python as RuntimeError / ValueError.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels.h"
#include "layout.h"

namespace py = pybind11;
using namespace fusedlr;

namespace {

// Every number the Python side must agree with, for its consistency check at import.
std::map<std::string, int> layout() {
  return {
      {"tensor.param", kParam}, {"tensor.grad", kGrad}, {"tensor.exp_avg", kExpAvg},
      {"tensor.exp_avg_sq", kExpAvgSq}, {"tensor.max_exp_avg_sq", kMaxExpAvgSq}, {"tensor.step", kStep},
      {"tensor.numel", kNumel}, {"tensor.group", kGroup}, {"tensor.chunk_begin", kChunkBegin},
      {"tensor.num_chunks", kNumChunks}, {"tensor.master", kMaster}, {"tensor.position", kPosition},
      {"tensor.exp_avg_scales", kExpAvgScales}, {"tensor.exp_avg_sq_scales", kExpAvgSqScales},
      {"tensor.master_residual", kMasterResidual},
      {"tensor.columns", kTensorColumns},
      {"group.lr", kLr}, {"group.weight_decay", kWeightDecay}, {"group.beta1", kBeta1}, {"group.beta2", kBeta2},
      {"group.eps", kEps}, {"group.agc_clip_factor", kAgcClipFactor}, {"group.agc_eps", kAgcEps},
      {"group.grad_sign", kGradSign}, {"group.seed", kSeed}, {"group.columns", kGroupColumns},
      {"schedule.host_multiplier", kHostMultiplier}, {"schedule.max_grad_norm", kMaxGradNorm},
      {"schedule.num_instructions", kNumInstructions}, {"schedule.scale_register", kScaleRegister},
      {"schedule.offset_register", kOffsetRegister}, {"schedule.clip_value", kClipValue},
      {"schedule.slots", kScheduleSlots},
      {"coef.grad_scale", kGradScale}, {"coef.decay", kDecay}, {"coef.step_size", kStepSize},
      {"coef.bc2_sqrt", kBc2Sqrt}, {"coef.beta1", kCoefBeta1}, {"coef.one_minus_beta1", kOneMinusBeta1},
      {"coef.beta2", kCoefBeta2}, {"coef.one_minus_beta2", kOneMinusBeta2}, {"coef.eps", kCoefEps},
      {"coef.sr_key", kSrKey}, {"coef.unscale", kUnscale}, {"coef.clip_value", kClipValueCoef},
      {"coef.columns", kCoefColumns},
      {"op.const", kConst}, {"op.add", kAdd}, {"op.sub", kSub}, {"op.mul", kMul}, {"op.div", kDiv},
      {"op.min", kMin}, {"op.max", kMax}, {"op.lt", kLt}, {"op.le", kLe}, {"op.where", kWhere}, {"op.cos", kCos},
      {"op.sqrt", kSqrt}, {"op.exp", kExp}, {"op.log", kLog}, {"op.floor", kFloor}, {"op.pow", kPow},
      {"op.abs", kAbs}, {"program.instruction_width", kInstructionWidth},
      {"program.max_registers", kMaxRegisters},
      {"dtype.float32", kFloat32}, {"dtype.float64", kFloat64}, {"dtype.float16", kFloat16},
      {"dtype.bfloat16", kBFloat16},
      {"rule_group.dampening", kDampening}, {"rule_group.nesterov", kNesterov},
      {"rule_group.coupled_weight_decay", kCoupledWeightDecay}, {"rule_group.warmup_steps", kWarmupSteps},
      {"rule_group.r", kR}, {"rule_group.weight_lr_power", kWeightLrPower}, {"rule_group.columns", kRuleGroupColumns},
      {"rule.adamw", kRuleAdamW}, {"rule.lion", kRuleLion}, {"rule.sgd", kRuleSgd},
      {"rule.schedulefree", kRuleScheduleFree},
      {"group_sums.lr_max", kLrMax}, {"group_sums.weight_sum", kWeightSum}, {"group_sums.ckp1", kCkp1},
      {"group_sums.scheduled_lr", kScheduledLr}, {"group_sums.rows", kGroupSumRows},
      {"quant.block", kQuantBlock}, {"quant.signed_levels", kSignedLevels},
      {"quant.unsigned_levels", kUnsignedLevels}, {"quant.signed_slack_log2", kSignedSlackLog2},
  };
}

std::pair<double, double> schedule_on_cpu(const std::vector<double>& program, int num_instructions,
                                          int scale_register, int offset_register, double k) {
  if (program.size() < static_cast<size_t>(num_instructions) * kInstructionWidth) {
    throw std::invalid_argument("fusedlr: schedule program shorter than its instruction count");
  }
  double scale = 0.0, offset = 0.0;
  run_schedule_program(program.data(), num_instructions, scale_register, offset_register, k, &scale, &offset);
  return {scale, offset};
}

py::tuple probe_kernels_as_tuple() {
  const fusedlr::KernelProbe probe = fusedlr::probe_kernels();
  return py::make_tuple(probe.error, probe.message, probe.binary_version, probe.ptx_version);
}

void mixed_update_on_cpu_checked(int rule, int param_dtype, int grad_dtype, int state_dtype, uint64_t param,
                                 uint64_t master, uint64_t grad, uint64_t exp_avg, uint64_t exp_avg_sq,
                                 uint64_t max_sq, int64_t numel, int64_t first_index, const std::vector<double>& coef,
                                 bool stochastic) {
  if (coef.size() != static_cast<size_t>(kCoefColumns)) {
    throw std::invalid_argument("fusedlr: mixed_update_on_cpu takes one value per coef column");
  }
  mixed_update_on_cpu(rule, param_dtype, grad_dtype, state_dtype, param, master, grad, exp_avg, exp_avg_sq,
                      max_sq, numel, first_index, coef.data(), stochastic);
}

// The launch API: the device entry points on the module, their host twins on its `host` submodule.
struct Launches {
  decltype(&fusedlr::grad_sumsq) grad_sumsq;
  decltype(&fusedlr::tensor_sumsq) tensor_sumsq;
  decltype(&fusedlr::finalize) finalize;
  decltype(&fusedlr::update) update;
  decltype(&fusedlr::mixed_update) mixed_update;
  decltype(&fusedlr::quantized_update) quantized_update;
};

void def_launches(py::module_& m, const Launches& f) {
  m.def("grad_sumsq", f.grad_sumsq, py::arg("dtype"), py::arg("grad_dtype"), py::arg("tensor_table"),
        py::arg("num_tensors"), py::arg("chunk_table"), py::arg("num_chunks"), py::arg("chunk_begin"),
        py::arg("chunk_count"), py::arg("chunk_size"), py::arg("partial_grad"), py::arg("partial_param"),
        py::arg("with_param"), py::arg("found_inf"), py::arg("hyper"), py::arg("num_groups"), py::arg("grad_scale"),
        py::arg("has_clip_value"), py::arg("stream"));
  m.def("tensor_sumsq", f.tensor_sumsq, py::arg("tensor_table"), py::arg("num_tensors"), py::arg("partial_grad"),
        py::arg("partial_param"), py::arg("grad_sumsq"), py::arg("param_sumsq"), py::arg("with_param"),
        py::arg("found_inf"), py::arg("stream"));
  m.def("finalize", f.finalize, py::arg("tensor_table"), py::arg("num_tensors"), py::arg("hyper"),
        py::arg("num_groups"), py::arg("grad_sumsq"), py::arg("param_sumsq"), py::arg("coef"), py::arg("counter"),
        py::arg("norm_out"), py::arg("has_norms"), py::arg("has_clip"), py::arg("has_agc"), py::arg("rule"),
        py::arg("group_sums"), py::arg("grad_scale"), py::arg("found_inf"), py::arg("status"),
        py::arg("skipped_steps"), py::arg("skip_nonfinite"), py::arg("has_clip_value"), py::arg("stream"));
  m.def("update", f.update, py::arg("rule"), py::arg("dtype"), py::arg("tensor_table"), py::arg("num_tensors"),
        py::arg("chunk_table"), py::arg("num_chunks"), py::arg("chunk_begin"), py::arg("chunk_count"),
        py::arg("chunk_size"), py::arg("coef"), py::arg("found_inf"), py::arg("stream"));
  m.def("mixed_update", f.mixed_update, py::arg("rule"), py::arg("param_dtype"), py::arg("grad_dtype"),
        py::arg("state_dtype"), py::arg("tensor_table"), py::arg("num_tensors"), py::arg("chunk_table"),
        py::arg("num_chunks"), py::arg("chunk_begin"), py::arg("chunk_count"), py::arg("chunk_size"),
        py::arg("coef"), py::arg("found_inf"), py::arg("stochastic"), py::arg("stream"));
  m.def("quantized_update", f.quantized_update, py::arg("rule"), py::arg("param_dtype"), py::arg("grad_dtype"),
        py::arg("tensor_table"), py::arg("num_tensors"), py::arg("chunk_table"), py::arg("num_chunks"),
        py::arg("chunk_begin"), py::arg("chunk_count"), py::arg("chunk_size"), py::arg("coef"), py::arg("found_inf"),
        py::arg("stochastic"), py::arg("stream"));
}

}  // namespace

// The module's name carries the CUDA major version it was built with (_C_cu12, _C_cu13): one
// wheel may hold several, and fusedlr/_cuda.py loads the newest the driver can run.
#ifndef FUSEDLR_MODULE_NAME
#define FUSEDLR_MODULE_NAME _C
#endif

PYBIND11_MODULE(FUSEDLR_MODULE_NAME, m) {
  m.doc() = "fusedlr's CUDA kernels: addresses, sizes and the stream as integers; see csrc/kernels.h";
  m.def("layout", &layout, "Column, slot, opcode and dtype numbers, for the Python side's consistency check");
  m.def("cuda_runtime_version", &fusedlr::cuda_runtime_version, "CUDART_VERSION this was compiled with");
  m.def("compiled_archs", &fusedlr::compiled_archs, "The compute capabilities compiled for (800, ..., 900)");
  m.def("probe_kernels", &probe_kernels_as_tuple,
        "(cudaError_t, message, binary_version, ptx_version) of loading a kernel on the current device");
  m.def("schedule_on_cpu", &schedule_on_cpu, "The CUDA schedule interpreter's logic, run on the CPU (for tests)",
        py::arg("program"), py::arg("num_instructions"), py::arg("scale_register"), py::arg("offset_register"),
        py::arg("k"));
  def_launches(m, Launches{&fusedlr::grad_sumsq, &fusedlr::tensor_sumsq, &fusedlr::finalize, &fusedlr::update,
                           &fusedlr::mixed_update, &fusedlr::quantized_update});
  py::module_ host_twins = m.def_submodule(
      "host", "The launches' host twins: the same signatures on CPU tensors' addresses (tests without a GPU)");
  def_launches(host_twins, Launches{&host::grad_sumsq, &host::tensor_sumsq, &host::finalize, &host::update,
                              &host::mixed_update, &host::quantized_update});
  m.def("mixed_update_on_cpu", &mixed_update_on_cpu_checked,
        "The mixed-precision update's element code run on host memory (CPU tensors), for tests",
        py::arg("rule"), py::arg("param_dtype"), py::arg("grad_dtype"), py::arg("state_dtype"), py::arg("param"),
        py::arg("master"), py::arg("grad"), py::arg("exp_avg"), py::arg("exp_avg_sq"), py::arg("max_sq"),
        py::arg("numel"), py::arg("first_index"), py::arg("coef"), py::arg("stochastic"));
}

// Table layouts shared with fusedlr/_plan.py and opcodes shared with
// fusedlr/schedules/program.py. The Python side checks these numbers against its own at import
// (fusedlr/_cuda.py, via _C.layout()), so a drift fails loudly instead of computing nonsense.
#pragma once

namespace fusedlr {

// tensor_table: int64 [kTensorColumns, T], column-major by column.
enum TensorColumn : int {
  kParam = 0, kGrad, kExpAvg, kExpAvgSq, kMaxExpAvgSq, kStep, kNumel, kGroup, kChunkBegin, kNumChunks,
  kMaster, kPosition,  // the fp32 master copy (0: none); the param's index among all params
  kExpAvgScales, kExpAvgSqScales,  // 8-bit moments: float32 block scales (kExpAvg / kExpAvgSq hold the codes)
  kMasterResidual,  // split master weights: the int8 residuals (0: none)
  kTensorColumns
};

// hyper: float64 [kGroupColumns, G], then kScheduleSlots scalars, then the schedule program.
enum GroupColumn : int {
  kLr = 0, kWeightDecay, kBeta1, kBeta2, kEps, kAgcClipFactor, kAgcEps, kGradSign, kSeed, kGroupColumns
};
enum ScheduleSlot : int {
  kHostMultiplier = 0, kMaxGradNorm, kNumInstructions, kScaleRegister, kOffsetRegister,
  kClipValue,  // clamp of every grad element, 0: off
  kScheduleSlots
};

// Per-group hyperparameters of SGD and schedule-free AdamW: float64 [kRuleGroupColumns, G] after
// the schedule program (at hyper + kGroupColumns * G + kScheduleSlots + instructions * width).
enum RuleGroupColumn : int {
  kDampening = 0, kNesterov, kCoupledWeightDecay, kWarmupSteps, kR, kWeightLrPower, kRuleGroupColumns
};

// The update rule of a step (fusedlr/_plan.py RULES).
enum RuleCode : int { kRuleAdamW = 0, kRuleLion, kRuleSgd, kRuleScheduleFree, kNumRules };

// Schedule-free's per-group device bookkeeping: float64 [kGroupSumRows, G].
enum GroupSumRow : int { kLrMax = 0, kWeightSum, kCkp1, kScheduledLr, kGroupSumRows };

// 8-bit moments (fusedlr/_quantized.py): elements per float32 scale, and the code levels.
constexpr int kQuantBlock = 256;
constexpr int kSignedLevels = 127;
constexpr int kUnsignedLevels = 255;
constexpr int kSignedSlackLog2 = 12;  // exp_avg's codes: floor(127 |y| + 2^-12), toward zero

// coef: float64 [kCoefColumns, T], written by finalize, read by the updates.
enum CoefColumn : int {
  kGradScale = 0, kDecay, kStepSize, kBc2Sqrt, kCoefBeta1, kOneMinusBeta1, kCoefBeta2, kOneMinusBeta2, kCoefEps,
  kSrKey,  // the stochastic-rounding stream key of this update (a uint32 held in a float64)
  kUnscale, kClipValueCoef,  // clip_value: the grad is unscaled and clamped before kGradScale multiplies it
  kCoefColumns
};

// Schedule program: kInstructionWidth float64 per instruction (opcode, a, b, c, immediate).
enum Opcode : int {
  kConst = 0, kAdd, kSub, kMul, kDiv, kMin, kMax, kLt, kLe, kWhere, kCos, kSqrt, kExp, kLog, kFloor, kPow, kAbs,
  kNumOpcodes
};
constexpr int kInstructionWidth = 5;
constexpr int kMaxRegisters = 256;

// Storage dtypes of a bucket.
enum DType : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

}  // namespace fusedlr

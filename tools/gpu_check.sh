#!/usr/bin/env bash
# One call on a GPU machine: build the extension, run the GPU tests, run the benchmarks.
# Logs and results go to $OUT (default ./gpu-out). Usage: bash tools/gpu_check.sh [tests|bench|all]
set -u
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
what=${1:-all}
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
if ls .whl/*.whl >/dev/null 2>&1; then  # wheels carried to a machine without network
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site
fi
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  $PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
} 2>&1 | tee "$OUT/env.txt"
start=$(date +%s)
FUSEDLR_BUILD_CUDA=1 FUSEDLR_CUDA_ARCHS=${FUSEDLR_CUDA_ARCHS:-90} MAX_JOBS=16 \
    $PY -m pip install --no-build-isolation --no-deps --no-index -e . >"$OUT/build.log" 2>&1 \
    || { echo "BUILD FAILED"; tail -40 "$OUT/build.log"; }
echo "build: $(( $(date +%s) - start )) s"
$PY -c "import fusedlr; print('backends', fusedlr.available_backends())"
if [[ $what == tests || $what == all ]]; then
    # One process per file: a kernel fault poisons its process's CUDA context, and every later
    # test in that process would fail with it, hiding which ones are really broken.
    : >"$OUT/tests.log"
    for file in ${TEST_FILES:-tests/gpu/test_*.py tests/test_cuda_extension.py tests/test_kernel_probe.py}; do
        FUSEDLR_EXPECT_EXTENSION=1 timeout ${TEST_TIMEOUT:-300} $PY -m pytest "$file" \
            -q -rfEs --timeout=150 -p no:cacheprovider ${PYTEST_ARGS:-} >>"$OUT/tests.log" 2>&1
        rc=$?  # 124: the file's timeout; 134/139: a crash
        echo "$file: exit $rc: $(tail -1 "$OUT/tests.log")"
    done
    grep -E "^(FAILED|ERROR) " "$OUT/tests.log" | cut -c1-220
fi
if [[ $what == bench || $what == all ]]; then
    # Most important rows first; rows are recorded case by case, so a run cut short keeps them.
    # torch.compile's first step on the 2,000-tensor case takes minutes: that case runs the
    # eager baselines only (BENCH_MANY_SMALL_BASELINES to change).
    # After each run the rows so far go to $OUT too: a call cut at its limit returns only $OUT.
    bench() { timeout "$1" $PY -m fusedlr.bench "${@:2}" ${BENCH_ARGS:-} 2>&1 | grep --line-buffered -v "^[EW][0-9]"
              cp benchmarks/results/results.csv "$OUT/results.csv" 2>/dev/null; }
    { bench ${ADAMW_TIMEOUT:-220} --optimizer adamw --dtype float32 --case one_big --case llama_1b --case gpt2
      bench ${LION_TIMEOUT:-120} --optimizer lion --dtype float32
      bench ${SMALL_TIMEOUT:-60} --optimizer adamw --dtype float32 --case many_small \
          ${BENCH_MANY_SMALL_BASELINES:---baseline foreach --baseline fused}
      bench ${BF16_TIMEOUT:-90} --optimizer adamw --dtype bfloat16 --case gpt2 --case llama_1b
    } | tee "$OUT/bench.log"
    $PY -m fusedlr.bench --publish
    timeout ${HOST_TIMEOUT:-60} $PY -m pytest benchmarks --benchmark-only -q -p no:cacheprovider \
        --benchmark-columns=median,iqr,rounds --benchmark-sort=name 2>&1 | tee "$OUT/host.log" | tail -20
    tar czf "$OUT/results.tgz" benchmarks/results README.md
fi

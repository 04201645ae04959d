#!/usr/bin/env bash
# The peers' wheels for the GPU machine, which has no network: downloaded here into .whl/ (git
# ignores it), carried with the device call (`carry: [".whl"]`, about 46 MB), installed there by
# tools/gpu_check.sh. lion-pytorch and torch-optimi for the fp32 rows, FlashOptim, bitsandbytes
# and torchao for the bf16 rows with 8-bit states; schedulefree for the GPU parity tests.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(cat .python-path 2>/dev/null || echo python3)}
mkdir -p .whl
"$PY" -m pip download -q --no-deps -d .whl lion-pytorch flashoptim torch-optimi bitsandbytes torchao schedulefree
ls -la .whl

#!/usr/bin/env bash
# The release matrix: one wheel per Python (3.10 to 3.13 by default), each holding a CUDA 12
# and a CUDA 13 extension (fusedlr._C_cu12, fusedlr._C_cu13; the driver decides which loads),
# repaired to manylinux and checked. The CUDA 12.4 toolkit is fetched by tools/fetch_cuda12.sh;
# CUDA 13 is the local toolkit (CUDA13_HOME, default /usr/local/cuda).
#   PYTHONS="3.11 3.12" FUSEDLR_CUDA_ARCHS="80;90" bash tools/build_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
pythons=${PYTHONS:-"3.10 3.11 3.12 3.13"}
cuda12=$(bash tools/fetch_cuda12.sh)
cuda13=${CUDA13_HOME:-/usr/local/cuda}
export FUSEDLR_BUILD_CUDA=1 FUSEDLR_CUDA_HOMES="$cuda12;$cuda13"
export FUSEDLR_CUDA_ARCHS=${FUSEDLR_CUDA_ARCHS:-"80;86;89;90"}
rm -rf dist/raw
for version in $pythons; do
  python=$(bash tools/find_python.sh "$version")
  [ -n "$python" ] || { echo "python$version not found: skipped (PYTHONS selects the interpreters)" >&2; continue; }
  echo "== building for $("$python" --version)" >&2
  # The nvcc objects are shared: only the binding is compiled again per Python.
  "$python" -m pip wheel -q . --no-deps -w dist/raw
done
bash tools/repair_wheel.sh dist/raw dist
for wheel in dist/fusedlr-*manylinux*.whl; do
  bash tools/check_wheel.sh "$wheel"
done

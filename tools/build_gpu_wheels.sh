#!/usr/bin/env bash
# The wheels tools/gpu_wheel_check.sh installs on the GPU machine, which has no network: built
# here into .wheels-gpu/ (git ignores it) and carried with the device call (`carry:
# [".wheels-gpu"]`). One Python (PYTHON_VERSION, default 3.12, the GPU machine's), one folder per
# build, named after it (the wheels' file names are alike; pip wants the real ones):
#   cuda-13.0/   the local toolkit (CUDA13_HOME, default /usr/local/cuda), SASS sm_90 + PTX: the
#                CUDA version of driver 580 itself
#   cuda-13.1/   tools/fetch_cuda_pip.sh 13.1, SASS sm_90 + PTX: one minor version newer than that
#                driver (CUDA minor version compatibility: the SASS runs, the PTX cannot be JIT-ed)
#   cuda-13.0-jit/, cuda-13.1-jit/   the same toolkits with SASS sm_80 + PTX compute_80 only: an
#                H100 (sm_90) has to JIT-compile the PTX, which a driver can do only for PTX of its
#                own CUDA version or older (13.1's is PTX ISA 9.1, driver 580's JIT takes up to 9.0).
#                Their TEST_FILES file is empty: tools/gpu_wheel_check.sh runs one probe step each
#   release/     the release build of tools/build_wheels.sh: CUDA 12.4 (tools/fetch_cuda12.sh) and
#                13.0 extensions, SASS for 80;86;89;90 (RELEASE=0 leaves it out)
#   peers/       the pure-Python peers the GPU tests import (lion-pytorch, schedulefree)
# Each folder's BUILD.txt says how its wheel was built. Each wheel is repaired to manylinux
# (tools/repair_wheel.sh) and checked to hold exactly the extensions meant, each reporting the toolkit's CUDA version (cuda_runtime_version()).
#   bash tools/build_gpu_wheels.sh            (WHEELS_DIR: another folder than .wheels-gpu)
set -euo pipefail
cd "$(dirname "$0")/.."
version=${PYTHON_VERSION:-3.12}
python=$(bash tools/find_python.sh "$version")
[ -n "$python" ] || { echo "python$version not found (PYTHON_VERSION picks another)" >&2; exit 1; }
py=$(cat .python-path)
dest=${WHEELS_DIR:-.wheels-gpu}
cuda13=${CUDA13_HOME:-/usr/local/cuda}
cuda131=$(bash tools/fetch_cuda_pip.sh 13.1)
builds=("cuda-13.0|$cuda13|90" "cuda-13.1|$cuda131|90" "cuda-13.0-jit|$cuda13|80" "cuda-13.1-jit|$cuda131|80")
if [ "${RELEASE:-1}" == 1 ]; then
  builds+=("release|$(bash tools/fetch_cuda12.sh);$cuda13|80;86;89;90")
fi
raw=$(mktemp -d)
unpacked=$(mktemp -d)
trap 'rm -rf "$raw" "$unpacked"' EXIT
for build in "${builds[@]}"; do
  IFS='|' read -r label homes archs <<<"$build"
  echo "== $label: $("$python" --version), toolkits $homes, architectures $archs" >&2
  rm -rf "${raw:?}"/* "${dest:?}/$label"
  # setup.py drops an earlier build's extensions of other toolkits from build/lib; an extension
  # of the same name (_C_cu13 from 13.0, then from 13.1) is linked again (ninja: another command).
  FUSEDLR_BUILD_CUDA=1 FUSEDLR_CUDA_HOMES="$homes" FUSEDLR_CUDA_ARCHS="$archs" \
    "$python" -m pip wheel -q . --no-deps -w "$raw"
  bash tools/repair_wheel.sh "$raw" "$dest/$label"
  wheel=$(ls "$dest/$label"/fusedlr-*.whl)
  # Exactly one extension per toolkit, each built with that toolkit's CUDA version.
  rm -rf "${unpacked:?}"/*
  "$py" -m zipfile -e "$wheel" "$unpacked"
  want=$(for home in ${homes//;/ }; do
    "$home/bin/nvcc" --version | sed -n 's/.*release \([0-9]*\)\.\([0-9]*\),.*/_C_cu\1 \1.\2/p'
  done | sort)
  found=$(for so in "$unpacked"/fusedlr/_C_cu*.so; do
    (cd "$unpacked/fusedlr" && "$python" -c "import importlib.util, sys
spec = importlib.util.spec_from_file_location(sys.argv[1], sys.argv[2])
module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)
v = module.cuda_runtime_version()
print(sys.argv[1], f'{v // 1000}.{v % 1000 // 10}')" "$(basename "$so" | cut -d. -f1)" "$so")
  done | sort)
  [ "$found" == "$want" ] || { echo "FAIL: $wheel holds [$found], meant [$want]" >&2; exit 1; }
  echo "$(echo "$found" | sed 's/ \(.*\)/ (CUDA \1)/' | tr '\n' ' ')from $homes, FUSEDLR_CUDA_ARCHS=$archs, $("$python" --version), commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- csrc fusedlr setup.py || echo "+changes")" >"$dest/$label/BUILD.txt"
  [[ $label != *-jit ]] || : >"$dest/$label/TEST_FILES"
  echo "$label: $(basename "$wheel") $(du -h "$wheel" | cut -f1): $(cat "$dest/$label/BUILD.txt")" >&2
done
# The GPU tests' pure-Python peers (tools/fetch_peer_wheels.sh downloads them into .whl/)
mkdir -p "$dest/peers"
"$py" -m pip download -q --no-deps --only-binary=:all: -d "$dest/peers" lion-pytorch==0.2.5 schedulefree==1.4.1
du -ah "$dest" | sort -k2

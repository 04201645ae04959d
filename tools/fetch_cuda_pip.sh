#!/usr/bin/env bash
# A CUDA 13.x toolkit from NVIDIA's PyPI wheels, for building fusedlr's extension with a CUDA
# minor version the machine does not have (e.g. 13.1 where /usr/local/cuda is 13.0). Five wheels
# make the compiler part of a toolkit; each holds a piece of nvidia/cu13/, which is unpacked
# into DEST and completed to the layout setup.py and the wheels' own bin/nvcc.profile expect
# (the layout of a toolkit assembled from these wheels: lib64 -> lib, targets/x86_64-linux/):
#   nvidia-cuda-nvcc     bin/: nvcc, ptxas, nvlink, fatbinary, cudafe++, bin2c, nvcc.profile
#   nvidia-nvvm          nvvm/bin/cicc, nvvm/libdevice/, lib/libnvvm.so.4
#   nvidia-cuda-crt      include/crt/ (nvcc's device/host headers)
#   nvidia-cuda-runtime  include/ (cuda_runtime.h, cuda_fp16.h, ...), lib/libcudart_static.a
#   nvidia-cuda-cccl     include/cccl/ (libcu++, CUB, Thrust; nvcc adds it with -isystem)
# 13.1 is pinned to exact versions and SHA-256 sums; another VERSION takes the newest VERSION.*
# of each (printed with its sum). Needs network to PyPI and a python with pip.
#
#   bash tools/fetch_cuda_pip.sh [VERSION] [DEST]   (default 13.1, .toolkits/cuda-VERSION; prints the root)
set -euo pipefail
cd "$(dirname "$0")/.."
version=${1:-13.1}
dest=${2:-.toolkits/cuda-$version}
py=$(cat .python-path 2>/dev/null || command -v python3)
if [ -x "$dest/bin/nvcc" ] && [ -f "$dest/lib64/libcudart_static.a" ] && [ -x "$dest/nvvm/bin/cicc" ]; then
  echo "$(cd "$dest" && pwd)"
  exit 0
fi
case "$version" in
  13.*) ;;
  *) echo "fetch_cuda_pip.sh: VERSION $version: only CUDA 13.x ships nvcc itself on PyPI (nvidia-cuda-nvcc-cu12 lacks it; see tools/fetch_cuda12.sh)" >&2; exit 1 ;;
esac
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
names="nvidia-cuda-nvcc nvidia-nvvm nvidia-cuda-crt nvidia-cuda-runtime nvidia-cuda-cccl"
if [ "$version" == 13.1 ]; then
  cat >"$work/requirements.txt" <<'PINNED'
nvidia-cuda-nvcc==13.1.115 --hash=sha256:fe5c0604869dfbc837bdce9e1eef8e4f0e0d103c29e3875014ba3538c70efb74
nvidia-nvvm==13.1.115 --hash=sha256:6fdf483d85d9903f9cbf84c41d99221a86e0c0511d05de3d237b4ab69c11627e
nvidia-cuda-crt==13.1.115 --hash=sha256:53c9b03f804dc7e539dd11914ec3d3fd0849791d8cd6a73f0d4df984bb339916
nvidia-cuda-runtime==13.1.80 --hash=sha256:dac25b52e69050e5a7a84957e6df470a85b185f8f648a99a1ab1dfce027576cf
nvidia-cuda-cccl==13.1.115 --hash=sha256:d4a9e0590cd34290cda27f402a67fbf42e3ed043bdd927c6dd52419c860f2f92
PINNED
  hashes=(--require-hashes)
else
  for name in $names; do echo "$name==$version.*"; done >"$work/requirements.txt"
  hashes=()
fi
echo "fetching $names for CUDA $version from PyPI" >&2
# The wheels are py3-none-manylinux (x86_64): any Python downloads them; never an sdist.
"$py" -m pip download -q --no-deps --only-binary=:all: \
    ${hashes[@]+"${hashes[@]}"} -r "$work/requirements.txt" -d "$work/wheels" >&2
(cd "$work/wheels" && sha256sum ./*.whl) >&2
mkdir -p "$dest"
for wheel in "$work"/wheels/*.whl; do
  "$py" -m zipfile -e "$wheel" "$work/unpacked"
done
[ -d "$work/unpacked/nvidia/cu13/bin" ] || { echo "fetch_cuda_pip.sh: the wheels hold no nvidia/cu13/bin" >&2; exit 1; }
cp -a "$work/unpacked/nvidia/cu13/." "$dest/"
rm -rf "$dest/.metadata"
chmod +x "$dest"/bin/* "$dest/nvvm/bin/cicc" 2>/dev/null || true  # zipfile drops the mode bits
chmod -x "$dest/bin/nvcc.profile"
ln -sfn lib "$dest/lib64"
mkdir -p "$dest/targets/x86_64-linux"
ln -sfn ../../include "$dest/targets/x86_64-linux/include"
ln -sfn ../../lib "$dest/targets/x86_64-linux/lib"
(cd "$work/wheels" && ls ./*.whl | sed 's|^\./||') >"$dest/WHEELS.txt"

# The check: nvcc reports the version, and compiles and links a kernel against the static cudart
# (cicc, ptxas, fatbinary, nvlink, the headers and libcudart_static.a all found).
"$dest/bin/nvcc" --version | grep -q "release $version," \
  || { "$dest/bin/nvcc" --version >&2; echo "fetch_cuda_pip.sh: $dest/bin/nvcc is not CUDA $version" >&2; exit 1; }
cat >"$work/probe.cu" <<'CU'
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <cstdio>
__global__ void scale(__nv_bfloat16 *x, float a, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) x[i] = __float2bfloat16(a * __bfloat162float(x[i]));
}
int main() {
  int runtime = 0;
  cudaRuntimeGetVersion(&runtime);
  std::printf("probe built with cudart %d\n", runtime);
  return 0;
}
CU
"$dest/bin/nvcc" -O2 -gencode=arch=compute_90,code=sm_90 -cudart static "$work/probe.cu" -o "$work/probe" >&2
"$work/probe" >&2  # cudaRuntimeGetVersion needs no driver
"$dest/bin/nvcc" --version | tail -1 >&2
echo "$(cd "$dest" && pwd)"

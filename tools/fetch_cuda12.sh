#!/usr/bin/env bash
# A CUDA 12.4 toolkit for building fusedlr's CUDA 12 extension, without a system install: the
# compiler parts of Debian's packages (trixie, non-free; NVIDIA's own binaries, which run on
# older glibc too) are downloaded from Debian's archive, checked against their SHA-256 sums and
# unpacked into the standard layout (bin/nvcc, nvvm/, include/, lib64/libcudart_static.a).
# PyPI's nvidia-cuda-nvcc-cu12 wheels hold ptxas but not nvcc itself, so they cannot serve.
#
#   bash tools/fetch_cuda12.sh [DEST]      (default .toolkits/cuda-12.4; prints the root)
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${1:-.toolkits/cuda-12.4}
if [ -x "$dest/bin/nvcc" ] && [ -f "$dest/lib64/libcudart_static.a" ]; then
  echo "$(cd "$dest" && pwd)"
  exit 0
fi
archive=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# package file (in the archive's pool) and its SHA-256, from trixie's Packages index
packages=(
  "pool/non-free/n/nvidia-cuda-toolkit/nvidia-cuda-toolkit_12.4.131~12.4.1-2_amd64.deb cd5fe85aee38d108b315f408a688641478f2402622a10c677478eb7a6c4e5319"
  "pool/non-free/n/nvidia-cuda-toolkit/nvidia-cuda-dev_12.4.127~12.4.1-2_amd64.deb d846838f914a0176948d48a8bcade5d6dbcccb5c9374343f6475f5503f173ee0"
  "pool/non-free/n/nvidia-cuda-toolkit/libnvvm4_12.4.131~12.4.1-2_amd64.deb 3c905c1df7453e1ad477516c4465629c310d2f58a796d66f44070dc289e7ec12"
  "pool/main/c/cccl/libcu++-dev_2.3.2-2_all.deb 30e911c1909265591b5ea793df0e49e56bed631238b68b3e75c97590c4985686"
)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for entry in "${packages[@]}"; do
  read -r path sum <<<"$entry"
  file="$work/$(basename "$path")"
  echo "fetching $(basename "$path")" >&2
  curl -sSfL -o "$file" "$archive/$path"
  echo "$sum  $file" | sha256sum -c --quiet -
  dpkg-deb -x "$file" "$work/root"
done
r=$work/root
mkdir -p "$dest"/{bin,nvvm/bin,nvvm/lib64,nvvm/libdevice,lib64,include}
cp "$r/usr/lib/nvidia-cuda-toolkit/bin/nvcc" "$dest/bin/"
cp -r "$r/usr/lib/nvidia-cuda-toolkit/bin/crt" "$dest/bin/"
for tool in ptxas fatbinary cudafe++ nvlink bin2c; do cp "$r/usr/bin/$tool" "$dest/bin/"; done
cp "$r/usr/lib/nvidia-cuda-toolkit/bin/cicc" "$dest/nvvm/bin/"
cp -a "$r"/usr/lib/x86_64-linux-gnu/libnvvm.so* "$dest/nvvm/lib64/"
cp "$r/usr/lib/nvidia-cuda-toolkit/libdevice/libdevice.10.bc" "$dest/nvvm/libdevice/"
cp -r "$r"/usr/include/. "$dest/include/"
cp "$r/usr/lib/x86_64-linux-gnu/libcudart_static.a" "$dest/lib64/"
cat > "$dest/bin/nvcc.profile" <<'PROFILE'
TOP              = $(_HERE_)/..
NVVMIR_LIBRARY_DIR = $(TOP)/nvvm/libdevice
LD_LIBRARY_PATH += $(TOP)/lib64:$(TOP)/nvvm/lib64:
PATH            += $(TOP)/nvvm/bin:$(_HERE_):
INCLUDES        +=  "-I$(TOP)/include" $(_SPACE_)
LIBRARIES        =+ $(_SPACE_) "-L$(TOP)/lib64"
CUDAFE_FLAGS    +=
PTXAS_FLAGS     +=
PROFILE
"$dest/bin/nvcc" --version | tail -1 >&2
echo "$(cd "$dest" && pwd)"

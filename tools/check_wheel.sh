#!/usr/bin/env bash
# Checks a wheel built by `make wheel`: fusedlr/_C holds SASS for every architecture in
# FUSEDLR_CUDA_ARCHS (cuobjdump --list-elf), and the unpacked wheel imports next to torch with
# the extension loaded and agreeing with the Python tables.
set -euo pipefail
cd "$(dirname "$0")/.."
py=$(cat .python-path)
wheel=${1:-$(ls -t dist/fusedlr-*.whl 2>/dev/null | head -n 1)}
[ -n "$wheel" ] || { echo "no wheel in dist/: run make wheel" >&2; exit 1; }
archs=${FUSEDLR_CUDA_ARCHS:-80;86;89;90}
unpacked=$(mktemp -d)
trap 'rm -rf "$unpacked"' EXIT
"$py" -m zipfile -e "$wheel" "$unpacked"
so=$(ls "$unpacked"/fusedlr/_C*.so 2>/dev/null | head -n 1)
[ -n "$so" ] || { echo "$wheel has no fusedlr/_C extension" >&2; exit 1; }

# cuobjdump: the toolkit's, else the one Triton ships.
cuobjdump=$(command -v cuobjdump || true)
for dir in "${CUDA_HOME:-/usr/local/cuda}/bin" "$("$py" -c 'import os, triton; print(os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin"))' 2>/dev/null)"; do
  [ -z "$cuobjdump" ] && [ -x "$dir/cuobjdump" ] && cuobjdump="$dir/cuobjdump"
done
[ -n "$cuobjdump" ] || { echo "no cuobjdump found" >&2; exit 1; }
listing=$("$cuobjdump" --list-elf "$so")
echo "$listing"
for arch in ${archs//;/ }; do
  grep -q "sm_${arch}\b" <<<"$listing" || { echo "FAIL: no sm_${arch} code in $(basename "$so")" >&2; exit 1; }
done
echo "architectures present: ${archs}"

(cd "$unpacked" && "$py" - <<'PY'
import os
import fusedlr, fusedlr._cuda as cuda
assert os.path.abspath(fusedlr.__file__).startswith(os.getcwd()), fusedlr.__file__
assert cuda.load() is not None, "the wheel's extension did not load"
print("wheel imports:", fusedlr.__file__, "backends here:", fusedlr.available_backends())
PY
)
echo "wheel OK: $wheel"

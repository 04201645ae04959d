#!/usr/bin/env bash
# Checks a wheel built by `make wheel`: a manylinux tag that auditwheel agrees with, SASS for
# every architecture in FUSEDLR_CUDA_ARCHS in each fusedlr/_C_cu* extension (cuobjdump
# --list-elf), and the unpacked wheel importing next to torch with an extension loaded and
# agreeing with the Python tables (for another Python's wheel: the extension opens with it).
set -euo pipefail
cd "$(dirname "$0")/.."
py=$(cat .python-path)
wheel=${1:-$(ls -t dist/fusedlr-*.whl 2>/dev/null | head -n 1)}
[ -n "$wheel" ] || { echo "no wheel in dist/: run make wheel" >&2; exit 1; }
archs=${FUSEDLR_CUDA_ARCHS:-80;86;89;90}
unpacked=$(mktemp -d)
trap 'rm -rf "$unpacked"' EXIT
case "$(basename "$wheel")" in
  *manylinux*) ;;
  *) echo "FAIL: $wheel is not manylinux-tagged (make wheel repairs it with auditwheel)" >&2; exit 1 ;;
esac
shown=$("$py" -m auditwheel show "$wheel")
grep -q "consistent with" <<<"$shown" || { echo "FAIL: auditwheel show $wheel:" >&2; echo "$shown" >&2; exit 1; }
"$py" -m zipfile -e "$wheel" "$unpacked"
sos=$(ls "$unpacked"/fusedlr/_C_cu*.so 2>/dev/null || true)
[ -n "$sos" ] || { echo "$wheel has no fusedlr/_C_cu* extension" >&2; exit 1; }
# Exactly the extensions the last build made (setup.py writes their names, one per toolkit it
# found): no leftover of an earlier build.
[ -f build/extensions.txt ] || { echo "FAIL: build/extensions.txt missing: check a wheel right after make wheel" >&2; exit 1; }
want=$(sort build/extensions.txt | tr '\n' ' ')
found=$(for so in $sos; do basename "$so" | cut -d. -f1; done | sort | tr '\n' ' ')
[ "$found" == "$want" ] || { echo "FAIL: $wheel holds extensions [$found], built for [$want]" >&2; exit 1; }

# cuobjdump: the toolkit's, else the one Triton ships.
cuobjdump=$(command -v cuobjdump || true)
for dir in "${CUDA_HOME:-/usr/local/cuda}/bin" "$("$py" -c 'import os, triton; print(os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin"))' 2>/dev/null)"; do
  [ -z "$cuobjdump" ] && [ -x "$dir/cuobjdump" ] && cuobjdump="$dir/cuobjdump"
done
[ -n "$cuobjdump" ] || { echo "no cuobjdump found" >&2; exit 1; }
for so in $sos; do
  listing=$("$cuobjdump" --list-elf "$so")
  echo "$(basename "$so"):"; echo "$listing"
  for arch in ${archs//;/ }; do
    grep -q "sm_${arch}\b" <<<"$listing" || { echo "FAIL: no sm_${arch} code in $(basename "$so")" >&2; exit 1; }
  done
  for arch in $(grep -o "sm_[0-9]*[af]\?" <<<"$listing" | sort -u); do  # and nothing else (90a: arch-specific)
    [[ ";${archs};" == *";${arch#sm_};"* ]] || { echo "FAIL: $(basename "$so") has ${arch} code, not asked for" >&2; exit 1; }
  done
done
echo "architectures present: ${archs}"

# The extension of another Python cannot be imported here: check that it opens and reports its
# toolkit with that Python (no torch needed for this), the full import only with ours.
tag=$(basename "$wheel" | cut -d- -f3)
ours=$("$py" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
if [ "$tag" != "$ours" ]; then
  other=$(bash tools/find_python.sh "${tag:2:1}.${tag:3}")
  [ -n "$other" ] || { echo "wheel for $tag: no python${tag:2:1}.${tag:3} here to open it; architectures checked"; exit 0; }
  for so in $sos; do
    (cd "$(dirname "$so")" && "$other" -c "import importlib.util, sys
name = '$(basename "$so")'.split('.')[0]
spec = importlib.util.spec_from_file_location(name, '$so')
module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)
print(name, 'built with CUDA', module.cuda_runtime_version(), 'opens with', sys.version.split()[0])")
  done
  echo "wheel OK: $wheel"
  exit 0
fi
(cd "$unpacked" && "$py" - <<'PY'
import os
import fusedlr, fusedlr._cuda as cuda
assert os.path.abspath(fusedlr.__file__).startswith(os.getcwd()), fusedlr.__file__
assert cuda.load() is not None, "the wheel's extension did not load"
print("wheel imports:", fusedlr.__file__, "backends here:", fusedlr.available_backends())
PY
)
echo "wheel OK: $wheel"

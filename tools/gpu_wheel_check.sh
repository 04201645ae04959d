#!/usr/bin/env bash
# On the GPU machine (no network), from the repository root: each built wheel installed the way
# a user installs it, then the GPU tests against the installed package, not the repository's.
# Per wheel under DIR (default .wheels-gpu/, built by tools/build_gpu_wheels.sh and carried with
# the device call): a fresh venv (--system-site-packages, so the machine's torch and Triton are
# used; where python3 is itself a venv, a .pth file adds that venv's site-packages too, which
# --system-site-packages alone does not), `pip install --no-index --no-deps` of the wheel (and of
# the pure-Python peers the tests import, from DIR/peers/ and .whl/), then, from a temporary
# directory holding a copy of tests/ and nothing of fusedlr/:
#   - the wheel, fusedlr.__file__ (must be inside the venv), available_backends(), the driver's
#     CUDA version, each installed extension with its CUDA version and its cuobjdump
#     --list-elf --list-ptx, which extension loads (or unavailable_reason());
#   - whether the extension should load, from CUDA's rules (printed with the reason): the
#     driver supports the extension's major version and either its minor version too, or the
#     extension holds SASS for this GPU (minor version compatibility: only PTX JIT needs a
#     driver as new as the toolkit). FUSEDLR_EXPECT_EXTENSION=1 for the tests only then;
#   - the fallback of an older driver, simulated (driver_cuda_version patched to one major below
#     the wheel's oldest extension): no extension, the message, backend="cuda" refused, a triton
#     step runs;
#   - one probe step with backend="cuda" against torch.optim.AdamW, where an extension loads;
#   - TEST_FILES (default: a fast subset; tools/gpu_check.sh runs the whole GPU suite; a file
#     TEST_FILES beside a wheel replaces the list for it, empty: the probe only), one pytest
#     process per file (a kernel fault poisons its process's CUDA context).
# Logs in OUT (default ./gpu-out): wheel-<build>.txt, wheel-<build>-tests.log, summary.txt; exit
# status 1 where summary.txt names a failure or a MISMATCH.
# BUDGET_S (default 540) stops starting test files once spent, to stay inside a 10-minute call;
# TEST_TIMEOUT (default 200) bounds one file, pytest-timeout (where installed) one test at 150 s.
#   bash tools/gpu_wheel_check.sh [DIR]
#   TEST_FILES="tests/gpu/test_gpu_step.py" PYTHON=python3 bash tools/gpu_wheel_check.sh
set -u
cd "$(dirname "$0")/.."
dir=${1:-.wheels-gpu}
OUT=${OUT:-gpu-out}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-python3}
files=${TEST_FILES:-tests/gpu/test_gpu_step.py tests/gpu/test_gpu_amp.py tests/gpu/test_gpu_clip_value.py tests/test_driver_check.py tests/test_kernel_probe.py}
budget=${BUDGET_S:-540}
start=$SECONDS
export PYTHONUNBUFFERED=1
unset PYTHONPATH  # nothing but the venv decides what is imported
[ -d "$dir" ] || { echo "no folder $dir: build the wheels with tools/build_gpu_wheels.sh and carry it" >&2; exit 1; }
# The wheels tested in full first, the probe-only builds (an empty TEST_FILES beside them) last.
mapfile -t wheels < <(find "$dir" -name 'fusedlr-*.whl' | sort | while read -r w; do
  if [ -f "$(dirname "$w")/TEST_FILES" ]; then echo "1 $w"; else echo "0 $w"; fi
done | sort -s -k1,1 | cut -d' ' -f2-)
[ ${#wheels[@]} -gt 0 ] || { echo "no fusedlr-*.whl under $dir" >&2; exit 1; }
# the peers, one file per name (DIR/peers/ first)
declare -A seen=()
peers=""
for peer in "$dir"/peers/*.whl .whl/*-none-any.whl; do
  [ -f "$peer" ] && [ -z "${seen[$(basename "$peer")]:-}" ] || continue
  seen[$(basename "$peer")]=1 peers="$peers $peer"
done
work=$(mktemp -d "${TMPDIR:-/tmp}/fusedlr-wheelcheck.XXXXXX")
[ -n "${KEEP:-}" ] || trap 'rm -rf "$work"' EXIT
# The tests, away from the repository: tests/ whole (the GPU tests import helpers, oracles,
# test_schedule_library, tiny_gpt), pyproject.toml for pytest's settings (markers, addopts).
mkdir -p "$work/run"
cp -r tests "$work/run/" && cp pyproject.toml "$work/run/"
find "$work/run" -name __pycache__ -prune -exec rm -rf {} +
[ ! -e "$work/run/fusedlr" ] || { echo "the test folder holds a fusedlr/" >&2; exit 1; }

ours=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
# Where python3 is a venv (/opt/torch/.venv), its packages are not "system" ones for a venv made
# from it: a .pth line adds its site-packages (and runs their .pth files) after the new venv's.
parent_sites=$("$PY" -c 'import site, sys; print(" ".join(site.getsitepackages()) if sys.prefix != sys.base_prefix else "")')
{
  echo "python: $(command -v "$PY") ($ours); parent venv site-packages: ${parent_sites:-none (not a venv)}"
  echo "glibc: $(ldd --version 2>&1 | head -1)"
  if command -v nvidia-smi >/dev/null; then nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1; else echo "no nvidia-smi"; fi
  "$PY" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)" 2>&1
  echo "wheels: ${wheels[*]}"
  echo "peers: $(echo $peers)"
  echo "test files: $files"
} | tee "$OUT/summary.txt"

cat >"$work/report.py" <<'PY'
"""What the installed wheel holds and does; writes 1 or 0 (the extension should load) to argv[2]."""
import os, re, subprocess, sys
venv, expect_file, cuobjdump, label = sys.argv[1:5]
import torch
import fusedlr
from fusedlr import _backends, _cuda

here = os.path.realpath(fusedlr.__file__)
print("fusedlr.__file__:", fusedlr.__file__)
inside = here.startswith(os.path.realpath(venv) + os.sep)
print("  inside the venv:", "yes" if inside else f"NO: the repository's or another copy was imported ({here})")
driver = _cuda.driver_cuda_version()
capability = torch.cuda.get_device_capability() if torch.cuda.is_available() else None
sm = f"sm_{capability[0]}{capability[1]}" if capability else None
print("torch", torch.__version__, "cuda", torch.version.cuda, "| GPU:",
      f"{torch.cuda.get_device_name()} ({sm})" if sm else "none")
print("driver_cuda_version():", driver)
extensions = []
for major in _cuda.EXTENSION_MAJORS:
    module = _cuda._import(major)
    if module is None:
        continue
    version = module.cuda_runtime_version()
    built = (version // 1000, version % 1000 // 10)
    listing = ""
    if cuobjdump:
        run = subprocess.run([cuobjdump, "--list-elf", "--list-ptx", module.__file__], capture_output=True, text=True)
        listing = (run.stdout + run.stderr).strip()
    sass = set(re.findall(r"\.(sm_\d+[af]?)\.cubin", listing))
    ptx = set(re.findall(r"\.(sm_\d+[af]?)\.ptx", listing))
    extensions.append((major, built, sass, ptx))
    print(f"extension {module.__name__}: {module.__file__}\n  built with CUDA {built[0]}.{built[1]}; "
          f"SASS {sorted(sass) or '?'}, PTX {sorted(ptx) or '?'}")
    print("  cuobjdump --list-elf --list-ptx:\n    " + ("\n    ".join(listing.splitlines()) or "(no cuobjdump here)"))
if not extensions:
    print("extensions: none installed")


def runs(built, sass, ptx):
    """Whether CUDA runs an extension built with `built` here, and why."""
    if driver is None:
        return False, "no NVIDIA driver"
    if built[0] > driver[0]:
        return False, f"built with CUDA {built[0]}.{built[1]}, a newer major version than the driver's {driver[0]}.{driver[1]}"
    if sm is None:
        return True, "the driver supports its major version (no GPU to check the architectures)"
    # SASS runs on its own major architecture at an equal or higher minor (sm_80 on sm_86); "a"
    # variants (sm_90a) only on their own.
    has_sass = f"{sm}a" in sass or any(
        s[-1].isdigit() and int(s[3:-1]) == capability[0] and int(s[-1]) <= capability[1] for s in sass)
    if built > driver:  # minor version compatibility: SASS runs; PTX from a newer toolkit cannot be JIT-ed
        if has_sass:
            return True, (f"built with CUDA {built[0]}.{built[1]}, newer than the driver's {driver[0]}.{driver[1]} "
                          f"but the same major (minor version compatibility), with SASS for {sm}: no PTX JIT needed")
        return False, (f"built with CUDA {built[0]}.{built[1]}, newer than the driver's {driver[0]}.{driver[1]}, "
                       f"without SASS for {sm}: the driver cannot JIT a newer toolkit's PTX")
    if has_sass:
        return True, f"the driver supports CUDA {built[0]}.{built[1]}; SASS for {sm}"
    older = [p for p in ptx if int(re.sub(r"\D", "", p)) <= capability[0] * 10 + capability[1]]
    if older:
        return True, f"the driver supports CUDA {built[0]}.{built[1]}; PTX {sorted(older)} JIT-compiled for {sm}"
    return False, f"no SASS for {sm} and no PTX it can JIT"


# The loader's rule (fusedlr/_cuda.py): the newest extension whose major the driver supports.
chosen = next((e for e in extensions if driver is None or e[0] <= driver[0]), None)
if chosen is None:
    expect, why = False, ("no extension installed" if not extensions else
                          f"no extension of a major version the driver ({driver[0]}.{driver[1]}) supports")
else:
    expect, why = runs(*chosen[1:])
    why = f"_C_cu{chosen[0]}: {why}"
print(f"decision: the extension {'SHOULD' if expect else 'should NOT'} load and run here: {why}")
with open(expect_file, "w") as f:
    f.write("1" if (expect and inside) else "0")
try:
    loaded = _cuda.load()
except ImportError as error:
    loaded, reason = None, f"ImportError: {error}"
else:
    reason = _cuda.unavailable_reason()
print("loaded:", loaded.__name__ if loaded is not None else f"none: {reason}")
print("available_backends():", fusedlr.available_backends())
# A loaded extension's kernels may still not load on this GPU (no SASS for it, PTX too new for
# the driver): the runtime's own answer, asked by loading one kernel.
problem = None
if loaded is not None and torch.cuda.is_available():
    print("probe_kernels() (error, message, binary_version, ptx_version):", loaded.probe_kernels())
    problem = _cuda.kernel_load_problem(torch.device("cuda"))
    print("kernel_load_problem():", problem)
runs_here = loaded is not None and problem is None
if expect and not runs_here:
    print("MISMATCH: CUDA's rules say an extension runs here, fusedlr cannot run one")
if not expect and runs_here and driver is not None:
    print(f"MISMATCH: fusedlr runs {loaded.__name__}, which CUDA's rules say cannot run here ({why})")
if problem is not None:  # backend="cuda" must refuse before the step touches anything
    param = torch.nn.Parameter(torch.linspace(-1, 1, 5000, device="cuda"))
    param.grad, before = torch.ones_like(param), param.detach().clone()
    opt = fusedlr.AdamW([param], lr=0.1, backend="cuda")
    try:
        opt.step()
    except RuntimeError as error:
        unchanged = torch.equal(param, before) and not opt.state
        print(f"backend='cuda' refused ({'nothing' if unchanged else 'SOMETHING'} changed): {error}")
    else:
        print("MISMATCH: backend='cuda' stepped although its kernels cannot load here")
    print("backend='auto' chooses:", _backends.choose("auto", param.device))
if runs_here and torch.cuda.is_available():
    ours, ref = (torch.nn.Parameter(torch.linspace(-1, 1, 5000, device="cuda")) for _ in range(2))
    for p in (ours, ref):
        p.grad = torch.cos(torch.arange(5000, device="cuda", dtype=torch.float32))
    try:
        fusedlr.AdamW([ours], lr=0.1, weight_decay=0.01, max_grad_norm=1.0, backend="cuda").step()
        torch.cuda.synchronize()
    except Exception as error:
        print(f"probe step (backend='cuda'): FAILED: {type(error).__name__}: {error}")
    else:
        torch.nn.utils.clip_grad_norm_([ref], 1.0)
        torch.optim.AdamW([ref], lr=0.1, weight_decay=0.01).step()
        close = torch.allclose(ours, ref, rtol=1e-5, atol=1e-6)
        print(f"probe step (backend='cuda'): {'matches' if close else 'DIFFERS from'} torch.optim.AdamW")
sys.exit(0 if inside else 3)
PY

cat >"$work/fallback.py" <<'PY'
"""An older driver, simulated: driver_cuda_version() patched to one major below the wheel's
oldest extension. The real wheel, the real GPU: no extension, the message, backend="cuda"
refused, backend="auto" steps with triton."""
import torch
import fusedlr
from fusedlr import _backends, _cuda

majors = [m for m in _cuda.EXTENSION_MAJORS if _cuda._import(m) is not None]
if not majors:
    raise SystemExit("no extension installed: nothing to fall back from")
fake = (min(majors) - 1, 8)
_cuda.driver_cuda_version = lambda: fake
_cuda._choose.cache_clear()
print(f"simulated driver: CUDA {fake[0]}.{fake[1]} (the wheel holds {', '.join(f'_C_cu{m}' for m in majors)})")
assert _cuda.load() is None, "an extension loaded for a driver older than all of them"
print("unavailable_reason():", _cuda.unavailable_reason())
print("available_backends():", fusedlr.available_backends())
assert "cuda" not in fusedlr.available_backends()
if torch.cuda.is_available():
    try:
        _backends.choose("cuda", torch.device("cuda"))
    except RuntimeError as error:
        print("backend='cuda' raises:", error)
    else:
        raise AssertionError("backend='cuda' was accepted without an extension")
    ours, ref = (torch.nn.Parameter(torch.linspace(-1, 1, 5000, device="cuda")) for _ in range(2))
    for p in (ours, ref):
        p.grad = torch.cos(torch.arange(5000, device="cuda", dtype=torch.float32))
    fusedlr.AdamW([ours], lr=0.1, weight_decay=0.01, backend="auto").step()
    torch.optim.AdamW([ref], lr=0.1, weight_decay=0.01).step()
    torch.testing.assert_close(ours, ref)
    print(f"backend='auto' chose {_backends.choose('auto', ours.device)}; its step matches torch.optim.AdamW's")
print("fallback OK")
PY

# cuobjdump: on PATH, the toolkit's, else the one Triton ships.
cuobjdump=$(command -v cuobjdump || true)
for candidate in "${CUDA_HOME:-/usr/local/cuda}/bin/cuobjdump" \
    "$("$PY" -c 'import os, triton; print(os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/cuobjdump"))' 2>/dev/null)"; do
  [ -z "$cuobjdump" ] && [ -x "$candidate" ] && cuobjdump=$candidate
done
echo "cuobjdump: ${cuobjdump:-none found}" | tee -a "$OUT/summary.txt"

n=0
for wheel in "${wheels[@]}"; do
  n=$((n + 1))
  build=$(dirname "${wheel#"$dir"/}")
  [ "$build" == . ] && build=$n
  label=${build//\//-}
  report="$OUT/wheel-$label.txt"
  log="$OUT/wheel-$label-tests.log"
  tag=$(basename "$wheel" | cut -d- -f3)
  echo "== [$build] $(basename "$wheel") ($(du -h "$wheel" | cut -f1))" | tee "$report"
  [ -f "$(dirname "$wheel")/BUILD.txt" ] && echo "built: $(cat "$(dirname "$wheel")/BUILD.txt")" | tee -a "$report"
  if [ "$tag" != "$ours" ] && [ "$tag" != py3 ]; then
    echo "skipped: a wheel for $tag, this python is $ours" | tee -a "$report" "$OUT/summary.txt"
    continue
  fi
  venv="$work/venv-$n"
  log_to_report() { "$@" 2>&1 | tee -a "$report"; return "${PIPESTATUS[0]}"; }
  if ! log_to_report "$PY" -m venv --system-site-packages --without-pip "$venv"; then
    echo "[$build] FAIL: $PY -m venv" | tee -a "$OUT/summary.txt"
    continue
  fi
  site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  for parent in $parent_sites; do echo "import site; site.addsitedir('$parent')"; done >"$site/_parent_venv.pth"
  # pip: the parent's (seen through the .pth), else the venv's own from ensurepip (no network)
  "$venv/bin/python" -m pip --version >/dev/null 2>&1 || log_to_report "$venv/bin/python" -m ensurepip -q
  if ! log_to_report "$venv/bin/python" -m pip install -q --no-index --no-deps --ignore-installed --no-compile "$wheel" $peers; then
    echo "[$build] FAIL: pip install $wheel" | tee -a "$OUT/summary.txt"
    continue
  fi
  echo "installed in $venv: $(basename "$wheel")$(for p in $peers; do echo -n " $(basename "$p" | cut -d- -f1-2)"; done)" | tee -a "$report"
  (cd "$work/run" && "$venv/bin/python" "$work/report.py" "$venv" "$work/expect-$n" "$cuobjdump" "$build") 2>&1 | tee -a "$report"
  expect=$(cat "$work/expect-$n" 2>/dev/null || echo fail)
  if [ "$expect" == fail ] || grep -q "inside the venv: NO" "$report"; then
    echo "[$build] FAIL: the wheel's fusedlr was not the one imported (see $report); its tests not run" | tee -a "$OUT/summary.txt"
    continue
  fi
  echo "-- simulated older driver" | tee -a "$report"
  (cd "$work/run" && timeout 120 "$venv/bin/python" "$work/fallback.py") 2>&1 | tee -a "$report"
  extension_line=$(grep -E "^(decision|loaded|probe step)" "$report" | paste -sd'|' | sed 's/|/ | /g')
  echo "[$build] $extension_line | FUSEDLR_EXPECT_EXTENSION=$expect" >>"$OUT/summary.txt"
  grep -q "^MISMATCH" "$report" && grep "^MISMATCH" "$report" | sed "s/^/[$build] /" >>"$OUT/summary.txt"
  grep -q "^fallback OK" "$report" || echo "[$build] simulated fallback FAILED (see $report)" >>"$OUT/summary.txt"
  timeout_opt=""
  "$venv/bin/python" -c "import pytest_timeout" 2>/dev/null && timeout_opt="--timeout=150"
  wheel_files=$files
  [ -f "$(dirname "$wheel")/TEST_FILES" ] && wheel_files=$(cat "$(dirname "$wheel")/TEST_FILES")
  [ -n "$wheel_files" ] || echo "[$build] no test files for this build (its TEST_FILES is empty): the probe step only" >>"$OUT/summary.txt"
  : >"$log"
  for file in $wheel_files; do
    if (( SECONDS - start > budget )); then
      echo "[$build] $file: not run (BUDGET_S=$budget spent)" | tee -a "$OUT/summary.txt"
      continue
    fi
    echo "== $file (FUSEDLR_EXPECT_EXTENSION=$expect)" >>"$log"
    if [ "$expect" == 1 ]; then expect_env=(FUSEDLR_EXPECT_EXTENSION=1); else expect_env=(-u FUSEDLR_EXPECT_EXTENSION); fi
    (cd "$work/run" && env "${expect_env[@]}" timeout "${TEST_TIMEOUT:-200}" "$venv/bin/python" -m pytest "$file" \
        -q -rfEs $timeout_opt -p no:cacheprovider ${PYTEST_ARGS:-} >>"$log" 2>&1)
    echo "[$build] $file: exit $?: $(tail -1 "$log")" | tee -a "$OUT/summary.txt"
  done
  grep -E "^(FAILED|ERROR) " "$log" | cut -c1-220 | sed "s/^/[$build] /" | tee -a "$OUT/summary.txt"
done
echo "elapsed: $((SECONDS - start)) s; logs in $OUT" | tee -a "$OUT/summary.txt"
# Exit status 1 where anything needs a look: a failed install or import, a MISMATCH between
# CUDA's rules and what fusedlr loaded, a failed probe or fallback, a test file not passing.
! grep -qE "FAIL|MISMATCH|: exit [1-9]" "$OUT/summary.txt"

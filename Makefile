# The two commands of the README: `make bench` (the main job) and `make test`.
PY = $$(cat .python-path)

.PHONY: setup bench test test-cpu test-native lint wheel wheel-check wheels sdist clean

setup:
	@bash tools/setup_env.sh

# Throughput of one whole step (clip + schedule + update) against torch.optim, on the device there is.
bench: setup
	$(PY) -m fusedlr.bench $(BENCH_ARGS)

# Native Triton first (kernels compiled for sm_80/sm_90, which needs no GPU; tests/gpu, which
# skip without one), then the CPU suite under the interpreter, whose summary closes the run.
test: setup lint test-native test-cpu

test-native:
	$(PY) -m pytest tests/compiled tests/gpu -q -rs

test-cpu:
	TRITON_INTERPRET=1 $(PY) -m pytest tests -q --ignore=tests/gpu --ignore=tests/compiled

lint:
	$(PY) -m ruff check fusedlr tests benchmarks examples
	$(PY) -m ruff format --check fusedlr tests benchmarks examples

# A manylinux wheel for this Python with the CUDA extension, for the architectures in
# FUSEDLR_CUDA_ARCHS (default 80;86;89;90) and the toolkit(s) in FUSEDLR_CUDA_HOMES (default:
# the local one).
wheel: setup
	rm -rf dist/raw
	FUSEDLR_BUILD_CUDA=$${FUSEDLR_BUILD_CUDA:-1} $(PY) -m pip wheel . --no-deps -w dist/raw
	bash tools/repair_wheel.sh dist/raw dist

# The wheel's tag, architectures and import next to torch.
wheel-check: wheel
	bash tools/check_wheel.sh

# Release builds: Python 3.10-3.13 (PYTHONS), each wheel with a CUDA 12.4 and a CUDA 13 extension.
wheels: setup
	bash tools/build_wheels.sh

# The pure-Python source distribution (it builds the extension where a toolkit is found).
sdist: setup
	$(PY) -m pip install -q build
	$(PY) -m build --sdist -o dist

clean:
	rm -rf .venv .python-path build dist *.egg-info .pytest_cache .ruff_cache fusedlr/_C*.so .toolkits

# The two commands of the README: `make bench` (the main job) and `make test`.
PY = $$(cat .python-path)

.PHONY: setup bench test test-cpu test-native lint wheel wheel-check clean

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

# A wheel with the CUDA extension, for the architectures in FUSEDLR_CUDA_ARCHS (default 80;86;89;90).
wheel: setup
	FUSEDLR_BUILD_CUDA=$${FUSEDLR_BUILD_CUDA:-1} $(PY) -m pip wheel . --no-deps -w dist

# The wheel holds the requested architectures and imports next to torch.
wheel-check: wheel
	bash tools/check_wheel.sh

clean:
	rm -rf .venv .python-path build dist *.egg-info .pytest_cache .ruff_cache fusedlr/_C*.so

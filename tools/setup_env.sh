#!/usr/bin/env bash
# Chooses the Python that runs fusedlr's tests and benchmarks and installs what it lacks.
# A Python that already imports torch (a GPU machine with its own CUDA build) is used as it is,
# so its torch is kept; otherwise a .venv is made with the pinned CPU-friendly versions.
# Writes the chosen interpreter's path to .python-path for the Makefile.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if "$PYTHON" -c "import torch" 2>/dev/null; then
  py=$("$PYTHON" -c "import sys; print(sys.executable)")
  "$py" -m pip install -q -e ".[test,bench]"
else
  [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
  py=$PWD/.venv/bin/python
  "$py" -m pip install -q -c constraints-ci.txt torch
  "$py" -m pip install -q -c constraints-ci.txt -e ".[test,bench]"
fi
echo "$py" > .python-path
"$py" -c "import torch, fusedlr; print('fusedlr', fusedlr.__version__, 'torch', torch.__version__, 'backends', fusedlr.available_backends())"

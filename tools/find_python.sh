#!/usr/bin/env bash
# Prints the path of a working python<VERSION> (e.g. 3.12): on PATH, else pyenv's; nothing if none.
#   bash tools/find_python.sh 3.12
version=$1
for candidate in "$(command -v "python$version" 2>/dev/null)" \
                 $(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$version"*/bin/"python$version" 2>/dev/null); do
  if [ -n "$candidate" ] && "$candidate" -c "import sys" >/dev/null 2>&1; then
    echo "$candidate"
    exit 0
  fi
done

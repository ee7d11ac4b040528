#!/usr/bin/env bash
# Create .venv (Python >= 3.12) with alflow and its dev extra, if it is not there yet.
# Used by `make demo`, `make test` and CI. Set ALFLOW_PYTHON to choose the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}

find_python() {
  local cand
  for cand in "${ALFLOW_PYTHON:-}" python3.13 python3.12 python3; do
    [ -n "$cand" ] || continue
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
      command -v "$cand"; return 0
    fi
  done
  # pyenv keeps other versions out of PATH: ask it for any installed 3.12+/3.13
  if command -v pyenv >/dev/null 2>&1; then
    for v in $(pyenv versions --bare 2>/dev/null | grep -E '^3\.(1[2-9])' | sort -rV); do
      local p; p="$(pyenv root)/versions/$v/bin/python3"
      [ -x "$p" ] && { echo "$p"; return 0; }
    done
  fi
  return 1
}

if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import alflow, pytest' >/dev/null 2>&1; then
  PY=$(find_python) || { echo "alflow needs Python >= 3.12 (none found; set ALFLOW_PYTHON)" >&2; exit 1; }
  echo "creating $VENV with $($PY -V)"
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -e ".[dev]"
fi

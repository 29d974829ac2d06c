#!/usr/bin/env bash
# Regenerates the Python stubs under src/ from protos/. Deterministic: running
# it twice changes nothing, and CI fails when the committed stubs drift.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export PATH="$(dirname "$PY"):$PATH"
mapfile -t files < <(cd protos && find . -name '*.proto' | sed 's|^\./||' | sort)
"$PY" -m grpc_tools.protoc -I protos \
  --python_out=src --grpc_python_out=src --mypy_out=src --mypy_grpc_out=src \
  "${files[@]}"
# Make every generated directory a package.
for f in "${files[@]}"; do
  d=src/$(dirname "$f")
  while [ "$d" != "src" ] && [ "$d" != "src/voxmesh" ]; do
    [ -f "$d/__init__.py" ] || : > "$d/__init__.py"
    d=$(dirname "$d")
  done
done

#!/usr/bin/env bash
# The test command (README, .ci/run): makes .venv on first use, builds the CPU reference of the native
# extension with g++, then runs pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# install only when the venv is new or what it installs changed (later runs need no network)
stamp=$(cat requirements-dev.txt pyproject.toml | sha1sum | cut -c1-16)
if [ "$(cat .venv/.arcattn-deps 2>/dev/null)" != "$stamp" ]; then
    .venv/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0 -r requirements-dev.txt
    .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .
    echo "$stamp" > .venv/.arcattn-deps
fi
# the suites that need them would skip as a whole without them: fail here instead
.venv/bin/python -c "import triton, diffusers, pybind11" || { echo "tests/run.sh: a pinned test dependency does not import" >&2; exit 1; }
if [ -f extension/build.py ]; then
    .venv/bin/python extension/build.py --cpu-reference --quiet
fi
exec .venv/bin/python -m pytest "$@"

#!/usr/bin/env bash
# The test command (README, .ci/run): makes .venv on first use, builds the CPU reference of the native
# extension with g++, then runs pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0 -r requirements-dev.txt
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .
if [ -f extension/build.py ]; then
    .venv/bin/python extension/build.py --cpu-reference --quiet
fi
exec .venv/bin/python -m pytest "$@"

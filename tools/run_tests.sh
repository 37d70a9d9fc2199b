#!/usr/bin/env bash
# The test command: installs what the project needs, lints (ruff), then runs the whole suite on CPU
# (multi-process tests use gloo). Extra arguments go to pytest, e.g. `bash tools/run_tests.sh -m "not slow"`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
python3 -m ruff check .   # the lint rules and line length are in pyproject.toml
exec python3 -m pytest tests -q -p no:warnings --timeout 900 "$@"

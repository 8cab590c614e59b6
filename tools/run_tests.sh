#!/usr/bin/env bash
# The test command of the README: sets up .venv when needed, then runs the test suite on the CPU.
# Extra arguments go to pytest (e.g. `bash tools/run_tests.sh -k psroi`).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/tools/setup_env.sh"
cd "$ROOT"
exec "$ROOT/.venv/bin/python" -m pytest "$@"

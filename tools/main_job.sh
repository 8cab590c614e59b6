#!/usr/bin/env bash
# The main job of the README: sets up .venv when needed, generates the shapes dataset when missing,
# trains ACoupleNet on it, evaluates COCO box AP and writes work_dirs/main_job/report.md (+ .json, .png).
# Arguments go to tools/main_job.py (e.g. `bash tools/main_job.sh --iters 500`; without --iters the job
# fits the config's schedule to --time-budget, 20 minutes by default).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/tools/setup_env.sh"
cd "$ROOT"
exec "$ROOT/.venv/bin/python" tools/main_job.py "$@"

#!/usr/bin/env bash
# kagglepipe's front door. Creates .venv from requirements.lock on first use (and when the lock changes).
#   ./run.sh demo [overrides...]   prepare -> train -> evaluate -> predict on the generated demo dataset, offline
#   ./run.sh test [pytest args]    the test suite
#   ./run.sh setup                 only create/refresh the environment
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ] || [ requirements.lock -nt .venv/.installed ] || [ pyproject.toml -nt .venv/.installed ]; then
  echo "setting up .venv from requirements.lock (first run takes a few minutes)"
  "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.lock
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .
  touch .venv/.installed
fi
cmd=${1:-}
shift || true
case "$cmd" in
  demo)
    for stage in prepare train evaluate predict; do
      .venv/bin/python -m "src.$stage" dataset=demo "$@"
    done ;;
  # two test files at a time (pytest-xdist; one file's tests stay in order in one worker): the suite is mostly
  # single-threaded subprocess work, so this halves it on CI's 2 cores. KAGGLEPIPE_TEST_WORKERS=0: one process.
  test) exec .venv/bin/python -m pytest -n "${KAGGLEPIPE_TEST_WORKERS:-2}" --dist loadfile "$@" ;;
  setup) ;;
  *) echo "usage: ./run.sh demo|test|setup [args...]" >&2; exit 2 ;;
esac

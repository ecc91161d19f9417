# Sourced by the other scripts: make .venv and install the project from its own files.
# Idempotent: the install is skipped while pyproject.toml and the constraints are unchanged.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
export PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1 RAY_USAGE_STATS_ENABLED=0
export PREFECT_HOME="${PREFECT_HOME:-$REPO/.prefect}"
CONSTRAINTS="${LIVECC_CONSTRAINTS:-constraints/cpu.txt}"   # GPU machines: constraints/gpu.txt
EXTRAS="${LIVECC_EXTRAS:-test,whisper,train}"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv" >&2
  "$PY" -m venv .venv
fi
stamp=".venv/.livecc-install-$(cat pyproject.toml "$CONSTRAINTS" | sha256sum | cut -c1-16)-${EXTRAS//,/_}"
if [ ! -f "$stamp" ]; then
  echo "[setup] installing livecc-pipeline[$EXTRAS] with $CONSTRAINTS (first run takes a few minutes)" >&2
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -c "$CONSTRAINTS" -e ".[$EXTRAS]"
  rm -f .venv/.livecc-install-*
  touch "$stamp"
fi
export PATH="$REPO/.venv/bin:$PATH"

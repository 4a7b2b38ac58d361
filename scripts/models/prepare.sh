#!/usr/bin/env bash
# Regenerates the derived models and models/MANIFEST.json (see docs/models.md):
#   bash scripts/models/prepare.sh [--no-eval] [--runs N]
# Makes a Python venv at .venv-models/ (git-ignored) with onnx, onnxruntime, numpy and
# opencv-python-headless, then runs scripts/models/prepare.py with the arguments given.
# The accuracy step runs `bun run eval coco`, so Bun and the npm dependencies must be
# installed (scripts/setup.sh does both; it is run here when they are missing).
set -euo pipefail
cd "$(dirname "$0")/../.."

venv=.venv-models
if [ ! -x "$venv/bin/python" ]; then
  echo "prepare.sh: creating $venv"
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet -r scripts/models/requirements.txt

case " $* " in
  *" --no-eval "*) ;;
  *) if ! command -v bun >/dev/null 2>&1 || [ ! -d node_modules/onnxruntime-node ]; then bash scripts/setup.sh; fi ;;
esac

exec "$venv/bin/python" scripts/models/prepare.py "$@"

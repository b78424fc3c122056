#!/usr/bin/env bash
# One-time set-up: creates .venv at the repository root and installs ivcprune (editable) with pinned dependencies.
#   bash setup.sh          CPU stack (torch 2.13.0 CPU wheel, no torchvision/timm)
#   bash setup.sh --cuda   CUDA stack for GPU users (CUDA torch + torchvision, qwen-vl-utils, flash-attn if it builds)
# Idempotent: a second run with nothing changed only verifies the environment and finishes in seconds.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(pwd)
MODE=cpu
for arg in "$@"; do
  case "$arg" in
    --cuda) MODE=cuda ;;
    -h|--help) sed -n 2,5p "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option '$arg' (use --cuda or nothing)" >&2; exit 2 ;;
  esac
done

TORCH_CPU="torch==2.13.0"
TORCH_CUDA=("torch==2.14.1" "torchvision==0.29.1")
PY=${PYTHON:-python3}
STAMP="$ROOT/.venv/.ivcp-setup-stamp"
want="$MODE $(cat pyproject.toml setup.sh | sha256sum | cut -c1-16)"

if [ ! -x "$ROOT/.venv/bin/python" ]; then
  echo "[setup] creating virtual environment .venv ($($PY --version 2>&1))"
  "$PY" -m venv "$ROOT/.venv"
fi
VPY="$ROOT/.venv/bin/python"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && "$VPY" -c "import ivcprune, torch, transformers" 2>/dev/null; then
  echo "[setup] .venv is up to date ($MODE): nothing to do"
  "$VPY" -c "import torch, transformers; print(f'[setup] torch {torch.__version__}, transformers {transformers.__version__}')"
  exit 0
fi

pipi() { "$VPY" -m pip install --disable-pip-version-check -q "$@"; }
echo "[setup] upgrading pip"
pipi --upgrade pip >/dev/null 2>&1 || true
if [ "$MODE" = cuda ]; then
  echo "[setup] installing CUDA stack: ${TORCH_CUDA[*]}"
  pipi "${TORCH_CUDA[@]}"
else
  echo "[setup] installing $TORCH_CPU (CPU wheel)"
  pipi "$TORCH_CPU"
fi
echo "[setup] installing ivcprune (editable) with transformers==5.23.0 and the evaluation/test extras"
pipi -e ".[eval,test]"
if [ "$MODE" = cuda ]; then
  echo "[setup] installing qwen-vl-utils"
  pipi qwen-vl-utils || echo "[setup] WARNING: qwen-vl-utils did not install (optional)"
  echo "[setup] trying flash-attn (optional; needs a CUDA toolkit, may take a while)"
  if pipi flash-attn --no-build-isolation; then echo "[setup] flash-attn installed"; else echo "[setup] flash-attn not installed: sdpa will be used"; fi
fi
"$VPY" -c "import torch, transformers, ivcprune; print(f'[setup] torch {torch.__version__}, transformers {transformers.__version__}, ivcprune {ivcprune.__version__}')"
echo "$want" > "$STAMP"
echo "[setup] done. Activate with: source .venv/bin/activate"

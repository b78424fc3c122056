#!/usr/bin/env bash
# Qwen3-VL-8B with IVC-Prune on the 8 standard RefCOCO/+/g splits (path env: QWEN3VL_8B_PATH). Qwen3-VL answers
# JSON bbox_2d boxes on a 0-1000 relative grid, so no _for_qwen3vl splits are needed. Other sizes:
# MODELS="Qwen3-VL-2B-Instruct_IVCP Qwen3-VL-30B-A3B-Instruct_IVCP" (4B, 32B likewise).
# Usage: bash scripts/test_ivcp_qwen3vl_grounding.sh [runner args, e.g. --limit 20]; see scripts/_ivcp_common.sh for the environment.
set -uo pipefail
source "$(dirname "$0")/_ivcp_common.sh"

ivcp_run_matrix "Qwen3-VL-8B-Instruct_Grounding_IVCP" "$IVCP_GROUNDING_SPLITS" "$@"

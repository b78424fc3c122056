#!/usr/bin/env bash
# Qwen2.5-VL-7B and -3B with IVC-Prune on general VQA (path envs: QWEN25VL_7B_PATH, QWEN25VL_3B_PATH).
# Usage: bash scripts/test_ivcp_qwen_generalvqa.sh [runner args, e.g. --limit 20]; see scripts/_ivcp_common.sh for the environment.
set -uo pipefail
source "$(dirname "$0")/_ivcp_common.sh"

ivcp_run_matrix "Qwen2.5-VL-7B-Instruct_IVCP Qwen2.5-VL-3B-Instruct_IVCP" "$IVCP_GENERALVQA" "$@"

#!/usr/bin/env bash
# Qwen3-VL-8B and -30B-A3B (MoE) with IVC-Prune on general VQA (path envs: QWEN3VL_8B_PATH, QWEN3VL_30B_A3B_PATH).
# Usage: bash scripts/test_ivcp_qwen3vl_generalvqa.sh [runner args, e.g. --limit 20]; see scripts/_ivcp_common.sh for the environment.
set -uo pipefail
source "$(dirname "$0")/_ivcp_common.sh"

ivcp_run_matrix "Qwen3-VL-8B-Instruct_IVCP Qwen3-VL-30B-A3B-Instruct_IVCP" "$IVCP_GENERALVQA" "$@"

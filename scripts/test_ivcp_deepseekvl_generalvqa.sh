#!/usr/bin/env bash
# DeepSeek-VL2-small with IVC-Prune on general VQA (path env: DEEPSEEKVL2_SMALL_PATH).
# Usage: bash scripts/test_ivcp_deepseekvl_generalvqa.sh [runner args, e.g. --limit 20]; see scripts/_ivcp_common.sh for the environment.
set -uo pipefail
source "$(dirname "$0")/_ivcp_common.sh"

ivcp_run_matrix "deepseek_vl2_small_ivcp" "$IVCP_GENERALVQA" "$@"

#!/usr/bin/env bash
# LLaVA-1.5-7B with IVC-Prune on general VQA (path env: LLAVA15_7B_PATH).
# Usage: bash scripts/test_ivcp_llava_generalvqa.sh [runner args, e.g. --limit 20]; see scripts/_ivcp_common.sh for the environment.
set -uo pipefail
source "$(dirname "$0")/_ivcp_common.sh"

ivcp_run_matrix "llava_v1.5_7b_IVCP" "$IVCP_GENERALVQA" "$@"

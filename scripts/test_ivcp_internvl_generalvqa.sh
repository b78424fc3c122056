#!/usr/bin/env bash
# InternVL3-8B with IVC-Prune on general VQA (path env: INTERNVL3_8B_PATH).
# Usage: bash scripts/test_ivcp_internvl_generalvqa.sh [runner args, e.g. --limit 20]; see scripts/_ivcp_common.sh for the environment.
set -uo pipefail
source "$(dirname "$0")/_ivcp_common.sh"

ivcp_run_matrix "InternVL3-8B_ivcp" "$IVCP_GENERALVQA" "$@"

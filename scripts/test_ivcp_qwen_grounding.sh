#!/usr/bin/env bash
# Qwen2.5-VL-7B with IVC-Prune on the 8 *_for_qwen25vl RefCOCO/+/g splits (path env: QWEN25VL_7B_PATH).
# With nothing configured (LMUData unset, no ~/LMUData, QWEN25VL_7B_PATH unset, no --model-path) it runs the
# embedded demo instead (ivcp demo, offline on the CPU): the pocket model shipped in ivcprune/pocket/model, a tiny
# Qwen2.5-VL trained here on synthetic referring scenes, evaluated unpruned and with 6 pruning methods at 50 %.
# Usage: bash scripts/test_ivcp_qwen_grounding.sh [runner args, e.g. --limit 20]; see scripts/_ivcp_common.sh for the environment.
# In demo mode the arguments go to `ivcp demo` (--rows N --seed S --work-dir D --batch-size B; others on to the runner).
set -uo pipefail
source "$(dirname "$0")/_ivcp_common.sh"
# Embedded default: nothing configured -> the offline demo (ivcprune/tools/demo.py).
case " $* " in *" --model-path "*) configured=1 ;; *) configured=0 ;; esac
if [ "$configured" = 0 ] && [ -z "${LMUData:-}" ] && [ ! -d "$HOME/LMUData" ] && [ -z "${QWEN25VL_7B_PATH:-}" ] \
   && [ -z "${MODELS:-}" ] && [ -z "${DATASETS:-}" ]; then
  exec "$PYTHON" -m ivcprune demo ${BATCH_SIZE:+--batch-size "$BATCH_SIZE"} "$@"  # BATCH_SIZE as in the matrix
fi
ivcp_run_matrix "Qwen2.5-VL-7B-Instruct_Grounding_IVCP" "$IVCP_GROUNDING_SPLITS_QWEN25" "$@"

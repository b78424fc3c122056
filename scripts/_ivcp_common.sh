# Shared by scripts/test_ivcp_*.sh (sourced, not run). Mirrors the official scripts: a MODELS x DATASETS loop that
# calls the runner once per pair, so one failing pair never stops the next (docs/HARNESS.md §11).
#
# Environment: LMUData (default ~/LMUData, read by the runner), the family's *_PATH variable (read by the runner
# through the registry), WORK_DIR (default ./outputs), MODELS and DATASETS (space-separated overrides),
# UNPRUNED=1 (also run the unpruned names; BASELINE=1 is the older spelling), PYTHON (interpreter; default the repository's .venv), BATCH_SIZE (rows
# per generate call, passed as --batch-size; unset: the registry's generation.batch_size, else 1).
# Extra command-line arguments are passed to every runner call, e.g. --limit 20.

IVCP_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$IVCP_ROOT/.venv/bin/python" ]; then PYTHON="$IVCP_ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi

ivcp_gpu_count() {
  # CUDA_VISIBLE_DEVICES wins (its entries are the GPUs); otherwise nvidia-smi -L; otherwise 0.
  if [ -n "${CUDA_VISIBLE_DEVICES+x}" ]; then
    local list="${CUDA_VISIBLE_DEVICES// /}"
    if [ -z "$list" ] || [ "$list" = "-1" ]; then echo 0; return; fi
    echo "$list" | tr ',' '\n' | grep -c .
  elif command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true
  else
    echo 0
  fi
}

ivcp_unpruned_names() {
  # the unpruned registry names: the same entry without the _IVCP / _ivcp suffix
  local m
  for m in "$@"; do echo "${m%_IVCP}" | sed 's/_ivcp$//'; done
}

ivcp_run_matrix() {
  # usage: ivcp_run_matrix "<default models>" "<default datasets>" [extra runner args...]
  local models_default="$1" datasets_default="$2"
  shift 2
  local models="${MODELS:-$models_default}" datasets="${DATASETS:-$datasets_default}"
  if [ "${UNPRUNED:-${BASELINE:-0}}" = "1" ]; then
    # shellcheck disable=SC2086
    models="$models $(ivcp_unpruned_names $models | tr '\n' ' ')"
  fi
  local work="${WORK_DIR:-./outputs}"
  local ngpu launcher
  ngpu="$(ivcp_gpu_count)"
  if [ "${ngpu:-0}" -gt 1 ]; then
    launcher=("$(dirname "$PYTHON")/torchrun" "--nproc-per-node=$ngpu" -m ivcprune run)
    [ -x "${launcher[0]}" ] || launcher=(torchrun "--nproc-per-node=$ngpu" -m ivcprune run)
  else
    launcher=("$PYTHON" -m ivcprune run)
  fi
  echo "[ivcp] models: $models"
  echo "[ivcp] datasets: $datasets"
  echo "[ivcp] LMUData=${LMUData:-~/LMUData (unset)} WORK_DIR=$work GPUs=$ngpu"
  local failed=0 total=0 model data rc
  local failed_pairs=()
  for model in $models; do
    for data in $datasets; do
      total=$((total + 1))
      echo "[ivcp] ==> $model x $data"
      "${launcher[@]}" --model "$model" --data "$data" --work-dir "$work" ${BATCH_SIZE:+--batch-size "$BATCH_SIZE"} "$@"
      rc=$?
      if [ "$rc" -eq 130 ]; then echo "[ivcp] interrupted"; exit 130; fi
      if [ "$rc" -ne 0 ]; then
        # the runner printed why above (preflight, failed rows, judge); a failed pair has no trustworthy score
        echo "[ivcp] FAILED (exit $rc): $model x $data"
        failed=$((failed + 1))
        failed_pairs+=("$model x $data (exit $rc)")
      fi
    done
  done
  echo "[ivcp] $((total - failed)) of $total pair(s) succeeded"
  if [ "$failed" -gt 0 ]; then
    echo "[ivcp] failed pairs (no trustworthy score; see the messages above):"
    printf '[ivcp]   %s\n' "${failed_pairs[@]}"
  fi
  [ "$failed" -eq 0 ]
}

IVCP_GROUNDING_SPLITS="RefCOCO_testA RefCOCO_testB RefCOCO_val RefCOCO+_testA RefCOCO+_testB RefCOCO+_val RefCOCOg_test RefCOCOg_val"
IVCP_GROUNDING_SPLITS_QWEN25="$(for s in $IVCP_GROUNDING_SPLITS; do printf '%s_for_qwen25vl ' "$s"; done)"
IVCP_GENERALVQA="SEEDBench_IMG MMBench_DEV_EN_V11 MMStar RealWorldQA MME POPE"

#!/usr/bin/env bash
# The prepared GPU-server run: proves pis-tui's CUDA paths and measures what ships from them.
#
#   OUT=/some/folder bash tests/gpu/run.sh            (from the repository root; python3 with
#                                                       torch, transformers, rich; pytest for the
#                                                       tests; nvidia-ml-py optional)
#
# Steps, each under its own time limit (seconds; the whole run stays under PIS_GPU_TOTAL_S,
# default 340, so that with the 10 s a stopped step gets to save it ends inside 6 minutes),
# each result written as soon as it ends:
#
#   env               versions, the GPU as torch and NVML see it, its conditions      15
#   gpu-kernels       pytest tests/gpu/test_cuda_timing.py, test_cuda_flex.py,
#                     test_cuda_quant.py: every op kind through CUDA graphs and eager, L2
#                     rotation, 2:4, FlexAttention prefill and decode, a sticky CUDA
#                     error (cold compiles); int4 (tinygemm) beside bf16 at M 1/16/128,
#                     fp8 _scaled_mm (SM 8.9+), act_quant: their times in the summary  85
#   calibrate         pis-tui calibrate --gpu local --models llama-3.1-8b --dtype bf16 100
#   validate-prefill  llama-3.1-8b: dense, static_depth, static_width, low_rank,
#                     dynamic_depth at 0.25 and 0.5, semi_structured_24;
#                     prefill 1×1024 and 8×1024, under CUDA graphs                     80
#   validate-decode   the same strategies, decode batch 1, 16 and 64 at context 1024    50
#   gpu-commands      pytest tests/gpu/test_cuda_commands.py: profile, validate and
#                     calibrate --quick of a small model end to end, hidden GPUs       70
#
# A step cut short by its limit (or by the whole run's) keeps what it wrote; running the
# script again finishes it.

# What comes back: $OUT/pis-gpu-run.tar.gz (everything: results/, logs, the tables) and
# $OUT/summary.log (one line a step, then the key figures).  Two files: the archive is
# repacked after every step, so a run cut short still returns what it finished.  Turn it into
# profiles/measured/h200-sxm.json and the validation table with
#
#   pis-tui gpu-run import pis-gpu-run.tar.gz --gpu h200-sxm
#
# Resumable: a step whose result is complete is skipped (its `.done` marker); calibrate and
# validate continue from their partial results (--resume).  Work files live in
# $PIS_GPU_WORK (default /tmp/pis-gpu-run); a run also resumes from $PIS_GPU_RESUME (an
# archive of an earlier run) or from an archive already in $OUT.
#
# It only reads the GPU's state: no clock locking, no persistence mode, no resets, no
# power limits.  Time is taken through CUDA graphs (an eager call carries tens of µs of
# launch overhead on such machines).

set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT" || exit 2
WORK=${PIS_GPU_WORK:-/tmp/pis-gpu-run}
OUT=${OUT:-$WORK/out}
RES=$WORK/results
PY=${PYTHON:-python3}
MODEL=${PIS_GPU_MODEL:-llama-3.1-8b}
DTYPE=${PIS_GPU_DTYPE:-bf16}
STRATEGIES=${PIS_GPU_STRATEGIES:-dense,static_depth,static_width,low_rank,dynamic_depth,semi_structured_24}
SPARSITIES=${PIS_GPU_SPARSITIES:-0.25,0.5}
PROMPT_LEN=${PIS_GPU_PROMPT_LEN:-1024}
PREFILL_BATCHES=${PIS_GPU_PREFILL_BATCHES:-1,8}
DECODE_BATCHES=${PIS_GPU_DECODE_BATCHES:-1,16,64}
CONTEXT_LEN=${PIS_GPU_CONTEXT_LEN:-1024}
REPEATS=${PIS_GPU_REPEATS:-3}
CALIBRATE_ARGS=${PIS_GPU_CALIBRATE_ARGS:-}
VALIDATE_ARGS=${PIS_GPU_VALIDATE_ARGS:-}
KERNEL_TESTS=${PIS_GPU_KERNEL_TESTS:-tests/gpu/test_cuda_timing.py tests/gpu/test_cuda_flex.py tests/gpu/test_cuda_quant.py}
COMMAND_TESTS=${PIS_GPU_COMMAND_TESTS:-tests/gpu/test_cuda_commands.py}
TOTAL_S=${PIS_GPU_TOTAL_S:-340}
ARCHIVE=$OUT/pis-gpu-run.tar.gz

mkdir -p "$OUT" "$RES" || exit 2
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
export PIS_GPU_RESULTS="$RES"  # where tests/gpu/test_cuda_quant.py writes the quantized kernels' times
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export TORCHINDUCTOR_CACHE_DIR="$WORK/inductor" TRITON_CACHE_DIR="$WORK/triton"  # compile once

# resume from an earlier run's archive (given, or left in $OUT) when the work folder is new
for prev in "${PIS_GPU_RESUME:-}" "$ARCHIVE"; do
  if [ -n "$prev" ] && [ -f "$prev" ] && [ ! -f "$RES/steps.jsonl" ]; then
    tar -xzf "$prev" -C "$WORK" && echo "resumed from $prev" >&2
  fi
done

T0=$(date +%s)
SUMMARY=$RES/summary.log
: >>"$SUMMARY"
echo "== pis-gpu-run $(date -u +%FT%TZ) model=$MODEL dtype=$DTYPE (work $WORK)" >>"$SUMMARY"

pack() {  # the archive and the summary: the two files that come back
  tar -czf "$ARCHIVE.tmp" -C "$WORK" results 2>/dev/null && mv -f "$ARCHIVE.tmp" "$ARCHIVE"
  cp -f "$SUMMARY" "$OUT/summary.log"
}

# step NAME BUDGET_S CMD...: skipped when RES/NAME.done exists; at most BUDGET_S seconds (and
# never past the whole run's budget); exit 0 (or, for tests, 1 = some failed) marks it done
step() {
  local name=$1 budget=$2; shift 2
  local over_var="PIS_GPU_STEP_S_${name//-/_}"
  budget=${!over_var:-$budget}
  if [ -f "$RES/$name.done" ]; then
    echo "$name: skipped (done earlier)" | tee -a "$SUMMARY" >&2
    return 0
  fi
  local now left
  now=$(date +%s); left=$(( TOTAL_S - (now - T0) ))
  if [ "$left" -lt 5 ]; then
    echo "$name: not started (the run's ${TOTAL_S} s are spent; run again to resume)" | tee -a "$SUMMARY" >&2
    printf '{"step": "%s", "status": "not-started"}\n' "$name" >>"$RES/steps.jsonl"
    return 0
  fi
  [ "$budget" -gt "$left" ] && budget=$left
  echo "$name: running (limit ${budget} s)" >&2
  local t rc
  t=$(date +%s)
  timeout -s TERM -k 10 "$budget" "$@" >"$RES/$name.log" 2>&1
  rc=$?
  local secs=$(( $(date +%s) - t )) status
  case "$rc" in
    0) status=ok ;;
    124|137) status=timeout ;;
    130) status=interrupted ;;
    *) status="failed (exit $rc)" ;;
  esac
  if [ "$rc" -eq 0 ]; then
    : >"$RES/$name.done"
  elif [ "${name#gpu-}" != "$name" ] && [ "$rc" -eq 1 ] && [ -s "$RES/$name.xml" ]; then
    : >"$RES/$name.done"  # the tests ran to the end; some failed (the summary lists them)
    status="done, some tests failed"
  fi
  echo "$name: $status in ${secs} s (limit ${budget} s)" | tee -a "$SUMMARY" >&2
  [ "$status" = ok ] || tail -n 3 "$RES/$name.log" | sed "s/^/  $name| /" >>"$SUMMARY"
  printf '{"step": "%s", "status": "%s", "rc": %d, "seconds": %d, "limit_s": %d}\n' \
    "$name" "$status" "$rc" "$secs" "$budget" >>"$RES/steps.jsonl"
  pack
}

step env 15 "$PY" -m pis_tui gpu-run env "$RES/env.json"

# pytest: plugins of the server's own are not loaded (none is needed; one could import what
# is absent here); the JUnit XML is the step's result
PYTEST=(env PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 "$PY" -m pytest -q -rfE -p no:cacheprovider)

step gpu-kernels 85 "${PYTEST[@]}" --junitxml="$RES/gpu-kernels.xml" $KERNEL_TESTS
# the quantized kernels' times beside bf16's (tinygemm's share at each M), as the tests wrote them
[ -s "$RES/quant-kernels.txt" ] && sed 's/^/  /' "$RES/quant-kernels.txt" >>"$SUMMARY"

step calibrate 100 "$PY" -m pis_tui calibrate --gpu local --models "$MODEL" --dtype "$DTYPE" \
  --out "$RES/calibrate.json" --resume $CALIBRATE_ARGS

# the op times behind the predictions: the calibrate table's where it has them; no untimed
# warm-up calls (on CUDA each model's graph capture runs three first)
REUSE=()
[ -f "$RES/calibrate.json" ] && REUSE=(--reuse-table "$RES/calibrate.json")
VALIDATE=("$PY" -m pis_tui validate --model "$MODEL" --dtype "$DTYPE" --strategy "$STRATEGIES"
          --sparsity "$SPARSITIES" --repeats "$REPEATS" --warmup 0 --cache "$RES/store.json"
          --resume "${REUSE[@]}" $VALIDATE_ARGS)

step validate-prefill 80 "${VALIDATE[@]}" --phase prefill --prefill-batch "$PREFILL_BATCHES" \
  --prompt-len "$PROMPT_LEN" --json "$RES/validate-prefill.json"

step validate-decode 50 "${VALIDATE[@]}" --phase decode --decode-batch "$DECODE_BATCHES" \
  --context-len "$CONTEXT_LEN" --json "$RES/validate-decode.json"

step gpu-commands 70 "${PYTEST[@]}" --junitxml="$RES/gpu-commands.xml" $COMMAND_TESTS

echo "-- total $(( $(date +%s) - T0 )) s" >>"$SUMMARY"
"$PY" -m pis_tui gpu-run summary "$RES" >>"$SUMMARY" 2>&1
pack
cat "$OUT/summary.log"

#!/usr/bin/env bash
# The GPU readiness suite (issue 13): on a GPU node, in at most 8 minutes, run
#   1. the GPU-marked tests (pytest -m gpu), among them CUDA-graph decode == eager
#   2. flexpipe-sim calibrate --quick (a measured profile of this device)
#   3. bench/kernel_bench.py (decode/prefill/KV-move/weight-load efficiency, a live refactor)
#   4. a serve session driven by the openai client (bench/serve_session.py, CUDA-graph decode)
#   5. flexpipe-sim validate on a GPU scenario, if that command exists
# and write one report, OUT/report.md, with every step's status, time and the tail of its output
# (the full outputs beside it). --cpu runs the same steps on CPU devices at small sizes, so CI
# proves the script works (tests/test_gpu_suite.py).
#
#   bash bench/gpu_suite.sh [--cpu] [--out DIR] [--skip STEP]... [--budget SECONDS]
#
# Environment: PYTHON (default: python), VALIDATE_SCENARIO (default: scenarios/live/gpu_small.yaml if
# present, else scenarios/live/cpu_small.yaml). Exit code 0 when every step passed or was skipped.
set -u

ARGS=("$@")
BUDGET=480   # the issue's 8 minutes for the whole suite
CPU=0
OUT=results/gpu_suite
SKIP=" "
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu) CPU=1 ;;
    --out) OUT="${2:?--out needs a folder}"; shift ;;
    --skip) SKIP="$SKIP${2:?--skip needs a step name} "; shift ;;
    --budget) BUDGET="${2:?--budget needs seconds}"; shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
# The total limit: the whole suite runs under `timeout $BUDGET` (each step also gets what is left).
if [ -z "${GPU_SUITE_INNER:-}" ]; then
  GPU_SUITE_INNER=1 exec timeout --kill-after=10 "$BUDGET" bash "$0" "${ARGS[@]}"
fi

PY="${PYTHON:-python}"
cd "$(dirname "$0")/.." || exit 2
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT" || { echo "error: cannot create $OUT" >&2; exit 2; }
REPORT="$OUT/report.md"
ROWS="$OUT/.rows"
: > "$ROWS"
START=$(date +%s)
DEADLINE=$((START + BUDGET - 5))   # 5 s to write the report after the last step

if [ "$CPU" = 1 ]; then
  MODE="cpu"
  DEVICES="cpu:2"
  PYTEST_ARGS="-m gpu tests/kernel -q -p no:cacheprovider"
  CALIBRATE="calibrate --quick --devices cpu --model tiny --layers 1 --passes 1 --repeats 2 --out $OUT/profile.json"
  BENCH="bench/kernel_bench.py --device cpu --model tiny --layers 2 --prefill 64"
  SERVE="bench/serve_session.py --devices cpu:2 --model tiny --cuda-graphs --concurrent 4 --max-tokens 8"
else
  MODE="gpu"
  NGPU=$("$PY" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
  if [ "${NGPU:-0}" -lt 1 ]; then echo "error: no CUDA GPU visible (use --cpu)" >&2; exit 2; fi
  DEVICES=$(seq -s, 0 $((NGPU > 2 ? 1 : NGPU - 1)) | sed 's/\([0-9]\+\)/cuda:\1/g')  # at most 2 stages
  PYTEST_ARGS="-m gpu tests -q -p no:cacheprovider"
  CALIBRATE="calibrate --quick --devices cuda:0 --out $OUT/profile.json"
  BENCH="bench/kernel_bench.py --device cuda --model llama2-7b --layers 8 --dtype bfloat16"
  SERVE="bench/serve_session.py --devices $DEVICES --model small --cuda-graphs --concurrent 16 --max-tokens 64"
fi
VSCEN="${VALIDATE_SCENARIO:-}"
if [ -z "$VSCEN" ]; then
  if [ "$MODE" = gpu ] && [ -f scenarios/live/gpu_small.yaml ]; then VSCEN=scenarios/live/gpu_small.yaml
  else VSCEN=scenarios/live/cpu_small.yaml; fi
fi

write_report() {
  {
    echo "# GPU suite report ($MODE)"
    echo
    echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ), host: $(hostname), devices: $DEVICES"
    echo "- torch: $("$PY" -c 'import torch; print(torch.__version__, "cuda", torch.version.cuda, "|", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")' 2>/dev/null)"
    echo "- budget: ${BUDGET} s, used: $(( $(date +%s) - START )) s"
    echo
    echo "| step | status | seconds | command | output |"
    echo "|---|---|---:|---|---|"
    cat "$ROWS"
    for log in "$OUT"/*.log; do
      [ -f "$log" ] || continue
      echo
      echo "## $(basename "$log" .log)"
      echo
      echo '```'
      tail -n 25 "$log"
      echo '```'
    done
  } > "$REPORT"
}

FAILED=0
# step NAME COMMAND...: run with what is left of the budget, log its output, add a report row
step() {
  local name="$1"; shift
  local log="$OUT/$name.log" left=$((DEADLINE - $(date +%s))) t0 rc status
  if [[ "$SKIP" == *" $name "* ]]; then
    echo "| $name | skipped (--skip) | 0 | \`$*\` | |" >> "$ROWS"; write_report; return
  fi
  if [ "$left" -le 5 ]; then
    echo "| $name | not run (budget spent) | 0 | \`$*\` | |" >> "$ROWS"; FAILED=1; write_report; return
  fi
  echo "== $name (up to ${left} s): $*"
  t0=$(date +%s%N)
  timeout --kill-after=5 "$left" "$@" > "$log" 2>&1
  rc=$?
  local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  local secs="$((ms / 1000)).$(( (ms % 1000) / 100 ))"
  if [ "$rc" = 0 ]; then status="passed"
  elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then status="FAILED (timed out)"; FAILED=1
  else status="FAILED (exit $rc)"; FAILED=1; fi
  echo "   $status in ${secs} s"
  echo "| $name | $status | $secs | \`$*\` | [$name.log]($name.log) |" >> "$ROWS"
  write_report
}

step gpu-tests "$PY" -m pytest $PYTEST_ARGS
step calibrate "$PY" -m flexpipe_sim.cli $CALIBRATE
step kernel-bench "$PY" $BENCH
step serve "$PY" $SERVE --json "$OUT/serve.json"
if "$PY" -m flexpipe_sim.cli validate --help > /dev/null 2>&1; then
  VHELP=$("$PY" -m flexpipe_sim.cli validate --help 2>/dev/null)
  VARGS=""
  if grep -q -- "--devices" <<< "$VHELP"; then VARGS="$VARGS --devices $DEVICES"; fi
  if grep -q -- "--out" <<< "$VHELP"; then VARGS="$VARGS --out $OUT/validate"; fi
  step validate "$PY" -m flexpipe_sim.cli validate "$VSCEN" $VARGS
else
  echo "| validate | skipped (no \`flexpipe-sim validate\` in this checkout) | 0 | | |" >> "$ROWS"
fi
write_report
rm -f "$ROWS"
echo "report: $REPORT"
exit $FAILED

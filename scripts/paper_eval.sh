#!/usr/bin/env bash
# The paper's evaluation as committed under docs/results/ (docs/paper-evaluation.md cites these).
#   scripts/paper_eval.sh ENGINE HORIZON_S NAME
#   scripts/paper_eval.sh paged 7200 paper_2h_paged     # 4 CVs x 2 h + the warm burst, 6 policies
#   scripts/paper_eval.sh eager 1800 paper_30min_eager  # torch-eager costs, 30-minute windows
# Runs two `compare` processes (the CVs split in halves; compare runs its runs one after another),
# rebuilds one report from both, and copies the light artefacts (summaries, tables, report, plots;
# not the per-request parquet files) into docs/results/NAME. Needs the project installed (README).
set -euo pipefail
cd "$(dirname "$0")/.."
engine=${1:-paged}; horizon=${2:-7200}; name=${3:-paper_${engine}}
policies=static,serverlessllm,alpaserve,muxserve,tetris,flexpipe
out=results/$name
sets=(--set "cost.engine=$engine")
[ "$horizon" != 7200 ] && sets+=(--set "horizon_s=$horizon")
# the burst test keeps its own window (stream_s / warmup_s; scenarios/paper/burst_cv8.yaml)
flexpipe-sim compare scenarios/paper/cv1.yaml scenarios/paper/cv2.yaml -p "$policies" "${sets[@]}" -o "$out/a" &
a=$!
flexpipe-sim compare scenarios/paper/cv4.yaml scenarios/paper/cv8.yaml -p "$policies" "${sets[@]}" -o "$out/b" &
b=$!
rc=0; wait $a || rc=$?; wait $b || rc=$?  # both halves finish (or fail) before we stop
[ $rc -eq 0 ] || exit $rc
flexpipe-sim compare scenarios/paper/burst_cv8.yaml -p "$policies" --set "cost.engine=$engine" -o "$out/burst"
flexpipe-sim report "$out/a" "$out/b" "$out/burst" -o "$out/report"
python scripts/collect_results.py "$out" "docs/results/$name"

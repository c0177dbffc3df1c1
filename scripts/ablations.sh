#!/usr/bin/env bash
# FlexPipe's ablations of docs/paper-evaluation.md ("Ablations"): scenarios/paper/cv4.yaml under one
# cost engine, one mechanism switched off per run (policy.params, flexpipe_sim/policies/flexpipe/params.py);
# light artefacts and ablations.md copied into docs/results/NAME.
#   scripts/ablations.sh paged 1800    # -> docs/results/ablations_cv4_paged_1800s
set -euo pipefail
cd "$(dirname "$0")/.."
engine=${1:-paged}; horizon=${2:-1800}; name=ablations_cv4_${engine}_${horizon}s
out=results/$name
declare -A variants=(
  [flexpipe]=""
  [no_refactor]="policy.params.refactor=false"
  [no_affinity]="policy.params.use_affinity=false"
  [no_topology]="policy.params.topology=false"
  [no_balance]="policy.params.balance=false"
  [small_host_cache]="cluster.host_cache_fraction=0.0001"
  [depth_1_2]="policy.params.granularities=[1,2]"
  [largest_first]="policy.params.launch_order=largest"
)
for v in flexpipe no_refactor no_affinity no_topology no_balance small_host_cache depth_1_2 largest_first; do
  sets=(--set "policy={name: flexpipe}" --set "cost.engine=$engine" --set "horizon_s=$horizon")
  [ -n "${variants[$v]}" ] && sets+=(--set "${variants[$v]}")
  flexpipe-sim run scenarios/paper/cv4.yaml "${sets[@]}" --quiet -o "$out/$v"
done
python scripts/ablation_table.py "$out" > "$out/ablations.md"
python scripts/collect_results.py "$out" "docs/results/$name"

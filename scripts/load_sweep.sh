#!/usr/bin/env bash
# The load sweep of docs/paper-evaluation.md ("Load sweep"): CV 4, total rate 5-25 req/s, every
# policy, 20-minute windows, under one cost engine; light artefacts copied into docs/results/NAME.
#   scripts/load_sweep.sh paged    # -> docs/results/loadsweep_cv4_paged
#   scripts/load_sweep.sh eager    # -> docs/results/loadsweep_cv4_eager
set -euo pipefail
cd "$(dirname "$0")/.."
engine=${1:-paged}; name=loadsweep_cv4_$engine
flexpipe-sim loadsweep scenarios/paper/cv4.yaml --rates 5,10,15,20,25 \
    -p static,serverlessllm,alpaserve,muxserve,tetris,flexpipe \
    --set "cost.engine=$engine" --set horizon_s=1200 -o "results/$name"
python scripts/collect_results.py "results/$name" "docs/results/$name"

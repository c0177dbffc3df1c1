#!/usr/bin/env bash
# The load sweep of docs/paper-evaluation.md ("Load sweep"): CV 4, total rate 5-25 req/s, every
# policy, windows of HORIZON_S (default 1200 s), under one cost engine; light artefacts copied into
# docs/results/loadsweep_cv4_ENGINE_HORIZONs.
#   scripts/load_sweep.sh paged 600    # -> docs/results/loadsweep_cv4_paged_600s
#   scripts/load_sweep.sh eager        # -> docs/results/loadsweep_cv4_eager_1200s
set -euo pipefail
cd "$(dirname "$0")/.."
engine=${1:-paged}; horizon=${2:-1200}; name=loadsweep_cv4_${engine}_${horizon}s
flexpipe-sim loadsweep scenarios/paper/cv4.yaml --rates 5,10,15,20,25 \
    -p static,serverlessllm,alpaserve,muxserve,tetris,flexpipe \
    --set "cost.engine=$engine" --set "horizon_s=$horizon" -o "results/$name"
python scripts/collect_results.py "results/$name" "docs/results/$name"

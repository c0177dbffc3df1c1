"""flexpipe_live: the live backend. The scenario's arrivals are replayed by wall clock against real
pipelines of flexpipe_kernel on local devices, and the scenario's policy (flexpipe_sim/policies)
decides launches, retirements and inflight refactors through flexpipe_core's view and actions, the
interface the simulator gives it. Results are written in the simulator's format (flexpipe_sim.metrics
and report), so `compare` and `report` read live runs too."""

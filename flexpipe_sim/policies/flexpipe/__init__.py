"""FlexPipe (Lin et al., EuroSys '26): partition.py (Eq. 2), granularity.py (Eq. 4-5, Algorithm 1),
autoscale.py (Eq. 11-13), profiles.py (T_k, L_k, mu_k), params.py, policy.py (the policy that puts them together)."""

from .policy import FlexPipeParams, FlexPipePolicy

__all__ = ["FlexPipeParams", "FlexPipePolicy"]

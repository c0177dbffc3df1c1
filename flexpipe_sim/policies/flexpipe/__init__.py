"""FlexPipe (Lin et al., EuroSys '26): partition.py (Eq. 2), granularity.py (Eq. 4-5, Algorithm 1),
autoscale.py (Eq. 11-13), policy.py (the policy that puts them together)."""

from .policy import FlexPipeParams, FlexPipePolicy

__all__ = ["FlexPipeParams", "FlexPipePolicy"]

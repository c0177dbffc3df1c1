"""`--devices`: which local devices the live backend may place stages on."""

from __future__ import annotations

import re


class LiveError(ValueError):
    """A live run cannot start (bad --devices, a model that does not fit): one message, exit 2."""


MAX_CPU_DEVICES = 64  # logical CPU devices share the host; more than this is a typo, not a plan


def parse_devices(text: str) -> list[str]:
    """'cpu:4' -> four logical CPU devices ['cpu', 'cpu', 'cpu', 'cpu'] (stages on the host, each its own
    cache); 'cuda:0,cuda:1' -> those GPUs, which must exist."""
    text = text.strip()
    m = re.fullmatch(r"cpu(?::(\d+))?", text)
    if m:
        n = int(m.group(1) or 1)
        if not 1 <= n <= MAX_CPU_DEVICES:
            raise LiveError(f"--devices {text!r}: the CPU device count must be 1-{MAX_CPU_DEVICES}")
        return ["cpu"] * n
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts or not all(re.fullmatch(r"cuda:\d+", p) for p in parts):
        raise LiveError(f"--devices {text!r}: expected cpu:N (N logical CPU devices) or a list like cuda:0,cuda:1")
    if len(set(parts)) != len(parts):
        raise LiveError(f"--devices {text!r}: a device is listed twice")
    import torch

    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    missing = [p for p in parts if int(p.split(":")[1]) >= have]
    if missing:
        raise LiveError(f"--devices {text!r}: {', '.join(missing)} not present (this machine has {have} CUDA device(s))")
    return parts

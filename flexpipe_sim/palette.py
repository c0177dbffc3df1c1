"""One fixed colour (and marker) per policy and per model, used by every plot.

Colours by position (matplotlib's cycle) mislabel a panel that lacks a policy or a model: every
line after the gap takes its neighbour's colour. So a known name always gets its own colour, and
an unknown name (a policy variant `flexpipe:refactor=false`, a custom model) one picked from its
name's hash, the same in every run and every figure.
"""

from __future__ import annotations

import zlib

POLICY_STYLE: dict[str, tuple[str, str]] = {
    "flexpipe": ("tab:blue", "o"), "static": ("tab:orange", "s"), "serverlessllm": ("tab:green", "^"),
    "alpaserve": ("tab:red", "D"), "muxserve": ("tab:purple", "v"), "tetris": ("tab:brown", "P")}

# The paper's four models (scenarios/paper); models and policies never share a plot.
MODEL_COLORS: dict[str, str] = {"llama2-7b": "tab:blue", "whisper-9b": "tab:orange", "bert-21b": "tab:green",
                                "opt-66b": "tab:red"}

# Extra colours for unknown names: darker / lighter tab20 shades, none equal to a fixed colour above.
EXTRA_COLORS = ["#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#17becf", "#bcbd22", "#7f7f7f",
                "#000000", "#e7ba52"]
EXTRA_MARKERS = "*Xhpd<>H"


def _hash(name: str) -> int:
    return zlib.crc32(name.encode())  # stable across processes, unlike hash()


def policy_style(label: str) -> tuple[str, str]:
    """(colour, marker) of a policy label: fixed for the six policies, from the name otherwise."""
    if label in POLICY_STYLE:
        return POLICY_STYLE[label]
    h = _hash(label)
    return EXTRA_COLORS[h % len(EXTRA_COLORS)], EXTRA_MARKERS[h // len(EXTRA_COLORS) % len(EXTRA_MARKERS)]


def model_color(name: str) -> str:
    """Colour of a model: fixed for the paper's models, from the name otherwise."""
    return MODEL_COLORS.get(name) or EXTRA_COLORS[_hash(name) % len(EXTRA_COLORS)]

POLICY_ORDER = ["flexpipe", "static", "serverlessllm", "alpaserve", "muxserve", "tetris"]


def policy_order(label: str) -> tuple[int, str]:
    """Sort key: the paper's order of policies, a variant beside its base policy, then by name."""
    base = label.split(":", 1)[0]
    return (POLICY_ORDER.index(base) if base in POLICY_ORDER else len(POLICY_ORDER), label)

"""Prompt and output lengths.

Default: the Azure LLM inference trace 2023 (Splitwise, Patel et al. ISCA 2024, CC-BY 4.0) as
empirical quantile tables (every 2.5th percentile, and finer in the tail: 97.5, 98, 98.5, 99, 99.5,
99.9, 100), computed with numpy's linear percentiles from
the full conversation and code files (19,366 and 8,819 rows; ../shared/traces/azure_llm_2023).
Sampling inverts the table with linear interpolation. Prompt and output are joined by a Gaussian
copula whose correlation is the normal-score correlation of the trace (conv 0.014, code -0.013), so
their dependence is kept as the source has it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr

_Q = np.concatenate([np.arange(0.0, 0.975, 0.025), [0.975, 0.98, 0.985, 0.99, 0.995, 0.999, 1.0]])


@dataclass(frozen=True)
class LengthTable:
    name: str
    prompt: tuple[int, ...]
    output: tuple[int, ...]
    rho: float

    def __post_init__(self) -> None:
        assert len(self.prompt) == len(_Q) == len(self.output), "one value per quantile knot"

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        z1 = rng.standard_normal(n)
        z2 = self.rho * z1 + np.sqrt(1.0 - self.rho**2) * rng.standard_normal(n)
        prompt = np.interp(ndtr(z1), _Q, self.prompt)
        output = np.interp(ndtr(z2), _Q, self.output)
        return np.maximum(1, np.rint(prompt)).astype(np.int64), np.maximum(1, np.rint(output)).astype(np.int64)

    @property
    def mean_output(self) -> float:
        return float(np.trapezoid(self.output, _Q))


AZURE_CONV = LengthTable(
    "azure-conv",
    prompt=(2, 120, 181, 200, 207, 235, 372, 379, 387, 393, 396, 400, 403, 407, 414, 428, 703, 922, 984, 1005,
            1020, 1034, 1045, 1058, 1071, 1083, 1097, 1112, 1130, 1153, 1189, 1277, 1315, 1434, 1876, 2309,
            2734, 4075, 4083, 4092, 4098, 4110, 4142, 4831, 6179, 14050),
    output=(7, 28, 41, 48, 54, 60, 67, 72, 77, 82, 85, 88, 91, 93, 96, 99, 103, 108, 113, 120, 129, 139, 151,
            162, 177, 195, 217, 373, 384, 391, 395, 396, 400, 406, 411, 416, 424, 430, 451, 522, 540, 571, 601,
            643, 954, 1000),
    rho=0.014,
)

AZURE_CODE = LengthTable(
    "azure-code",
    prompt=(3, 44, 75, 102, 147, 185, 232, 299, 386, 484, 578, 679, 770, 863, 939, 1016, 1075, 1153, 1261,
            1370, 1469, 1585, 1690, 1798, 1909, 2048, 2164, 2305, 2433, 2578, 2744, 2942, 3192, 3538, 3920,
            4434, 5188, 6097, 7303, 7435, 7436, 7436, 7436, 7436, 7437, 7437),
    output=(6, 6, 6, 6, 7, 7, 7, 8, 8, 9, 9, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 16, 16, 18, 19,
            20, 22, 24, 26, 29, 33, 39, 46, 55, 69, 90, 145, 171, 201, 251, 359, 825, 1899),
    rho=-0.013,
)

TABLES = {t.name: t for t in (AZURE_CONV, AZURE_CODE)}


@dataclass(frozen=True)
class SpeechLengths:
    """Encoder-decoder speech recognition (Whisper): every request's encoder input is the fixed
    30 s log-Mel window, `encoder_tokens` frames after the conv stem (1,500 for Whisper: it pads or
    cuts all audio to 30 s, Radford et al. 2022 §2.2), and the output is the transcript of the clip.

    No production distribution of clip lengths is published for the paper's workload. Clip
    durations are uniform over Whisper's window, 1-30 s (mean 15.5 s; LibriSpeech utterances
    average 12.3-12.7 s, Panayotov et al. 2015, the same range). Transcript: 2.5 words/s (150 words
    per minute, the usual conversational English rate) x 4/3 BPE tokens per word (OpenAI's "100
    tokens ~ 75 words"; Whisper uses GPT-2's byte-level BPE) + 4 control tokens (start of
    transcript, language, task, end of text): 7-104 tokens, mean 56."""

    encoder_tokens: int
    min_s: float = 1.0
    max_s: float = 30.0
    words_per_s: float = 2.5
    tokens_per_word: float = 4.0 / 3.0
    control_tokens: int = 4

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        dur = rng.uniform(self.min_s, self.max_s, n)
        out = np.rint(dur * self.words_per_s * self.tokens_per_word).astype(np.int64) + self.control_tokens
        return np.full(n, self.encoder_tokens, np.int64), out

    @property
    def mean_output(self) -> float:
        return (self.min_s + self.max_s) / 2 * self.words_per_s * self.tokens_per_word + self.control_tokens


@dataclass(frozen=True)
class FixedLengths:
    """Every request has the same lengths (tests, closed-form checks)."""

    prompt_tokens: int
    output_tokens: int

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        return np.full(n, self.prompt_tokens, np.int64), np.full(n, self.output_tokens, np.int64)

    @property
    def mean_output(self) -> float:
        return float(self.output_tokens)


@dataclass(frozen=True)
class EmpiricalLengths:
    """Resample (prompt, output) pairs of a trace jointly, so their dependence is exactly the source's."""

    prompt: np.ndarray
    output: np.ndarray

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        idx = rng.integers(0, len(self.prompt), n)
        return self.prompt[idx].astype(np.int64), self.output[idx].astype(np.int64)

    @property
    def mean_output(self) -> float:
        return float(self.output.mean())


@dataclass(frozen=True)
class PMFLengths:
    """Independent prompt and output lengths from probability mass functions (ServeGen publishes
    them separately, so no correlation is available to keep)."""

    prompt_values: np.ndarray
    prompt_probs: np.ndarray
    output_values: np.ndarray
    output_probs: np.ndarray

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        p = rng.choice(self.prompt_values, size=n, p=self.prompt_probs)
        o = rng.choice(self.output_values, size=n, p=self.output_probs)
        return np.maximum(1, p).astype(np.int64), np.maximum(1, o).astype(np.int64)

    @property
    def mean_output(self) -> float:
        return float(np.dot(self.output_values, self.output_probs))


def load_servegen_lengths(path) -> PMFLengths:
    """A ServeGen `chunk-<client>-dataset.json(.gz)`: PMFs per 6-hour window, pooled over windows."""
    import ast
    import json
    from pathlib import Path

    from .loaders import TraceError, _read_text

    path = Path(path)
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise TraceError(path, f"not JSON ({e.msg})", e.lineno) from None
    pools: dict[str, dict[int, float]] = {"input_tokens": {}, "output_tokens": {}}
    for window, fields in data.items():
        for name, pool in pools.items():
            if name not in fields:
                raise TraceError(path, f"window {window}: no {name!r} field")
            try:
                pmf = ast.literal_eval(fields[name])
            except (ValueError, SyntaxError):
                raise TraceError(path, f"window {window}: {name} is not a dict literal") from None
            for value, prob in pmf.items():
                pool[int(value)] = pool.get(int(value), 0.0) + float(prob)

    def arrays(pool: dict[int, float]) -> tuple[np.ndarray, np.ndarray]:
        v = np.array(sorted(pool), dtype=np.int64)
        p = np.array([pool[k] for k in sorted(pool)])
        return v, p / p.sum()

    pv, pp = arrays(pools["input_tokens"])
    ov, op = arrays(pools["output_tokens"])
    return PMFLengths(pv, pp, ov, op)

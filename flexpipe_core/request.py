"""A request's life: arrival -> (gateway queue) -> instance queue -> admitted -> prefill -> decode -> finish.

Token accounting follows vLLM v1: `num_tokens` = prompt + generated so far, `num_computed` = tokens
whose KV exists. Each step computes `num_tokens - num_computed` tokens (a prefill chunk, or 1 when
decoding); when they are all computed a new token is sampled. Preemption (recompute) sets
`num_computed` back to 0 and keeps the generated tokens, which are recomputed as part of the prompt.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(eq=False, slots=True)
class Request:
    id: int
    model: str
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    num_computed: int = 0
    generated: int = 0
    num_tokens: int = 0  # prompt + generated; kept as a field (read every step on the hot path)
    kv_tokens: int = 0  # tokens the request's KV blocks can hold (blocks held x block size)
    admitted_s: float = math.nan
    first_token_s: float = math.nan
    finish_s: float = math.nan
    instance_id: int = -1
    slot: int = -1
    preemptions: int = 0
    compute_s: float = 0.0  # stage compute on the request's critical path, summed over its steps
    comm_s: float = 0.0  # activation hops + token return, summed over its steps
    drop_reason: str = ""
    # Fast-forward bookkeeping (flexpipe_sim/engine/fastbatch.py): the slot's tick and summed step
    # times when this request's fields were last brought up to date.
    ff_tick: int = 0
    ff_compute: float = 0.0
    ff_comm: float = 0.0
    ff_due: int = 0  # the slot's tick at which its KV next grows by a block, as of kv_tokens

    def __post_init__(self) -> None:
        assert self.prompt_tokens >= 1 and self.output_tokens >= 1
        self.num_tokens = self.prompt_tokens + self.generated

    @property
    def is_finished(self) -> bool:
        return self.generated >= self.output_tokens

    @property
    def is_done(self) -> bool:
        """Finished or dropped: nothing more will happen to it."""
        return self.is_finished or bool(self.drop_reason)

    @property
    def max_tokens(self) -> int:
        """KV the request will need at its longest (its last token is sampled, never stored)."""
        return self.prompt_tokens + self.output_tokens - 1

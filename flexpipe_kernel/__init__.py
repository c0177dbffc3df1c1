"""flexpipe_kernel: the PyTorch data plane (pipeline stages, paged KV cache, continuous batching,
KV and weight migration, inflight refactoring). Imports torch; flexpipe_sim never imports this
package at module level."""

from .engine import PipelineEngine
from .model import PRESETS, ModelArgs, Transformer, build_model
from .stage import Stage, split_model

__all__ = ["PRESETS", "ModelArgs", "PipelineEngine", "Stage", "Transformer", "build_model", "split_model"]

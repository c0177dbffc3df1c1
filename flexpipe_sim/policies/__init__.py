"""Serving policies, found by name (see registry.py)."""

from . import registry
from .alpaserve import AlpaServeParams, AlpaServePolicy
from .flexpipe import FlexPipeParams, FlexPipePolicy
from .hetero_phase import HeteroPhaseParams, HeteroPhasePolicy
from .muxserve import MuxServeParams, MuxServePolicy
from .serverlessllm import ServerlessLLMParams, ServerlessLLMPolicy
from .static import StaticParams, StaticPolicy
from .tetris import TetrisParams, TetrisPolicy

registry.register("static", StaticParams, StaticPolicy)
registry.register("flexpipe", FlexPipeParams, FlexPipePolicy)
registry.register("serverlessllm", ServerlessLLMParams, ServerlessLLMPolicy)
registry.register("alpaserve", AlpaServeParams, AlpaServePolicy)
registry.register("muxserve", MuxServeParams, MuxServePolicy)
registry.register("tetris", TetrisParams, TetrisPolicy)
registry.register("hetero_phase", HeteroPhaseParams, HeteroPhasePolicy)

__all__ = ["registry"]

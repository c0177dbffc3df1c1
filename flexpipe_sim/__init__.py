"""flexpipe_sim: a SimPy discrete-event simulator of FlexPipe-style serverless LLM serving."""

from .scenario import Scenario, ScenarioError, load_scenario

__all__ = ["Scenario", "ScenarioError", "load_scenario"]
__version__ = "0.1.0"

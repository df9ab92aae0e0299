"""fxsurgeon: network surgery for PyTorch on torch.fx.

Trace a model into a :class:`ChannelGraph` that knows which channels are coupled,
count its cost exactly, and inspect it::

    import fxsurgeon as fxs
    graph = fxs.analyze(model, example_inputs)
    print(graph.summary())

plan and rewrite it (``plan``, ``rewrite``, ``export``; ``save`` and ``load`` keep a
rewritten model as data), or train it with Neural
Rejuvenation by swapping ``optimizer.step()`` for ``NeuralRejuvenation.step()``, or
prune it while it trains with ``DemP.step()`` (dead neurons found by their activations),
or prune it to a budget by the importance of its channels (:mod:`fxsurgeon.importance`).
What fxsurgeon knows about each op is in its op table (:mod:`fxsurgeon.ops`);
``register_op`` teaches it a layer of your own.
"""
from . import importance, ops
from .activations import activation_liveliness, activation_peaks
from .checkpoint import load, save
from .demp import DemP, Pruning
from .dimension import Dimension, Member
from .errors import FxSurgeonError, UntraceableModelError
from .export import export
from .graph import ChannelGraph, analyze
from .liveliness import liveliness
from .ops import register_op
from .partitioned import Partitioned
from .planner import DimPlan, Plan, plan
from .rejuvenation import Event, NeuralRejuvenation
from .rewriter import Surgery, rewrite
from .surgical import SurgicalModel

__all__ = ["analyze", "ChannelGraph", "Dimension", "Member", "FxSurgeonError",
           "UntraceableModelError", "liveliness", "plan", "Plan", "DimPlan", "rewrite",
           "Surgery", "save", "load", "Partitioned", "export", "NeuralRejuvenation", "SurgicalModel",
           "Event", "DemP", "Pruning", "activation_liveliness", "activation_peaks", "importance", "ops",
           "register_op"]
__version__ = "0.1.0"

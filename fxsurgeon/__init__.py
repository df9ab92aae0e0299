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
from .analysis.dimension import Dimension, Member
from .analysis.graph import ChannelGraph, analyze
from .errors import FxSurgeonError, UntraceableModelError
from .judging.activations import activation_liveliness, activation_peaks
from .judging.liveliness import liveliness
from .layers.partitioned import Partitioned
from .ops import register_op
from .persistence.checkpoint import load, save
from .planning.planner import DimPlan, Plan, plan
from .surgery.deploy import export
from .surgery.inplace import apply
from .surgery.judges import Judged, add_judges
from .surgery.rewriter import Surgery, rewrite
from .training.base import SurgicalModel
from .training.demp import DemP, Pruning
from .training.rejuvenation import Event, NeuralRejuvenation

__all__ = ["analyze", "apply", "ChannelGraph", "Dimension", "Member", "FxSurgeonError",
           "UntraceableModelError", "liveliness", "plan", "Plan", "DimPlan", "rewrite",
           "Surgery", "save", "load", "Partitioned", "export", "NeuralRejuvenation", "SurgicalModel",
           "Event", "DemP", "Pruning", "activation_liveliness", "activation_peaks", "importance", "ops",
           "register_op", "add_judges", "Judged"]
__version__ = "0.1.0"

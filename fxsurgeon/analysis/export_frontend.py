"""torch.export as a second front end: the models symbolic tracing cannot take.

``torch.export`` (non-strict) runs the model's Python and records the ATen ops it calls,
so control flow on sizes, ``forward(*args)``, item assignment on proxies and the other
things ``torch.fx.symbolic_trace`` stops at do not matter. :func:`export_module` turns the
exported program into a plain GraphModule that the rest of fxsurgeon reads like a
symbolic trace with functional layers: its parameters and buffers are attributes under
the user's module names (``layer1.0.conv1.weight``), shared with the user's model, and
its ATen calls have rules in the op table (:mod:`fxsurgeon.ops.aten`).

What the graph fixes: every size but the input's axes (exported as dynamic where the
model allows: other batch sizes and resolutions run) is a literal, and Python branches
(``if self.training``) are taken as in eval mode, where the model is exported. Batch
norms and dropout still follow ``train()``/``eval()``: their mode arguments read the
module's ``training`` flag (the op table's :attr:`~fxsurgeon.ops.rule.Rule.mode_argument`).
"""
from __future__ import annotations

import copy
import itertools
import re
import signal
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import fx, nn
from torch.export import Dim
from torch.fx.experimental.symbolic_shapes import GuardOnDataDependentSymNode
from torch.utils._pytree import tree_map, tree_structure

from ..channels.hooks import quiet
from ..channels.modes import evaluating
from ..errors import UntraceableModelError, one_line
from ..ops import TABLE
from .tracing import refuse_wrapped, stateless


def _dynamic(args: tuple) -> tuple:
    """Every axis of every tensor input free to vary where the model allows it."""
    return tuple({k: Dim.AUTO for k in range(a.dim())} if isinstance(a, torch.Tensor) else None
                 for a in args)


def _unviewed(args: tuple) -> tuple:
    """``args`` with every tensor that is a view of another (``batch[:1]``) copied out of it:
    torch.export guards on a view's base, so a graph exported from a slice fails on every
    fresh tensor (``'NoneType' object has no attribute 'size'``)."""
    return tree_map(lambda a: a.clone() if isinstance(a, torch.Tensor) and a._base is not None else a, args)


def sharing_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` that shares its parameters and buffers: what running its Python
    sets on its modules (ultralytics caches anchors in ``forward``) stays on the copy. The
    model itself where it cannot be copied."""
    memo = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    try:
        return copy.deepcopy(model, memo)
    except Exception:  # noqa: BLE001 - an attribute that does not copy: export the model itself
        return model


#: seconds torch.export may spend on dynamic input sizes before the example's sizes are used
#: instead (its shape reasoning can take hours: MONAI's SwinUNETR); None for no limit
DYNAMIC_SECONDS: float | None = 60.0


class _TooLong(BaseException):
    """Raised by :func:`_time_limit` (a BaseException: torch's own ``except Exception``
    blocks must not take it)."""


@contextmanager
def _time_limit(seconds: float | None) -> Iterator[None]:
    """Raise :class:`_TooLong` in the block after ``seconds``, by SIGALRM; no limit outside
    the main thread, where there is no SIGALRM, or while a timer of the caller's runs."""
    if seconds is None or threading.current_thread() is not threading.main_thread() \
            or not hasattr(signal, "setitimer") or signal.getitimer(signal.ITIMER_REAL)[0]:
        yield
        return

    def ring(signum, frame):
        raise _TooLong
    before = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, before)


def _export(model: nn.Module, args: tuple):
    """The exported program (called with its :data:`~fxsurgeon.analysis.tracing.STATELESS`
    keyword arguments), with dynamic input sizes if the model takes them within
    :data:`DYNAMIC_SECONDS`, else static; each attempt runs on a fresh :func:`sharing_copy`.
    Also returns why the sizes are static when that is news to the user (else None)."""
    kwargs, args = stateless(model), _unviewed(args)
    try:
        shapes = (*_dynamic(args), *[None] * len(kwargs))        # the keywords are flags
        with _time_limit(DYNAMIC_SECONDS):
            return torch.export.export(sharing_copy(model), args, kwargs, dynamic_shapes=shapes,
                                       strict=False), None
    except _TooLong:
        why = (f"torch.export took over {DYNAMIC_SECONDS:g} s to export {type(model).__name__} with dynamic "
               f"input sizes, so it was exported at the example's sizes: the traced network and the "
               f"networks rewritten from it run at those sizes only (a limit that "
               f"fxsurgeon.analysis.export_frontend.DYNAMIC_SECONDS sets)")
    except Exception:  # noqa: BLE001 - dynamic sizes are a bonus: fall back to the example's
        why = None
    return torch.export.export(sharing_copy(model), args, kwargs, strict=False), why


def _explain(exc: Exception) -> str:
    """Why export failed: torch's message, after what it means where the model reads a
    value of its input to decide a size or a branch (a data-dependent guard)."""
    text = f"{type(exc).__name__}: {one_line(exc)}"
    if not (isinstance(exc, GuardOnDataDependentSymNode) or "data-dependent" in str(exc)):
        return text
    where = re.search(r"Caused by: \(([^)]*)\)", str(exc))
    return (f"a data-dependent guard{f' at {where[1]}' if where else ''}: the model decides a size "
            f"or a branch from the values of an input (int(t.item()), if t.any(): ...), which no "
            f"trace can follow. Analyse the part of it after that value, with the value as one of "
            f"its inputs (docs/your-model.md, 'A model with data-dependent control flow'). {text}")


def export_module(model: nn.Module, args: tuple) -> fx.GraphModule:
    """``model`` exported (in eval mode, restored after; its hooks silent) as a GraphModule
    of ATen calls whose parameters are the model's own, or :class:`UntraceableModelError` naming the cause."""
    refuse_wrapped(model)
    try:
        with evaluating(model), quiet(model), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program, static = _export(model, args)
    except Exception as exc:  # noqa: BLE001 - every export failure gets the same explanation
        raise UntraceableModelError(f"torch.export cannot export {type(model).__name__}: "
                                    f"{_explain(exc)}") from exc
    if static:
        warnings.warn(f"fxsurgeon: {static}", stacklevel=3)
    unlifted = program.module()
    gm = fx.GraphModule(unlifted, unlifted.graph, type(model).__name__)
    _bind(gm, args, stateless(model))
    _follow_mode(gm)
    return gm.train(model.training)


def _bind(gm: fx.GraphModule, args: tuple, kwargs: dict) -> None:
    """Put the value of each of ``kwargs`` where the graph reads its input, so the graph
    takes the positional inputs (``args``) alone."""
    bound = [n for n in gm.graph.nodes if n.op == "placeholder" and n.target in kwargs]
    for node in bound:
        swap = dict.fromkeys([node], kwargs[node.target])
        for user in list(node.users):
            user.args = fx.node.map_arg(user.args, lambda a, swap=swap: swap.get(a, a))
            user.kwargs = fx.node.map_arg(user.kwargs, lambda a, swap=swap: swap.get(a, a))
        gm.graph.erase_node(node)
    info = getattr(gm.graph._codegen, "pytree_info", None)
    if bound and info is not None:          # the signature, and how it flattens its inputs
        spec = tree_structure(list(args))       # without keywords the code passes the list alone
        gm.graph._codegen.pytree_info = info._replace(
            orig_args=[a for a in info.orig_args if a not in kwargs], in_spec=spec)
        if hasattr(gm, "_in_spec"):
            gm._in_spec = spec
    gm.recompile()


def _follow_mode(gm: fx.GraphModule) -> None:
    """Make the ops that train differently (op table: ``mode_argument``) read the module's
    ``training`` flag instead of the literal they were exported with."""
    modules = dict(gm.named_modules())
    flag = None
    for node in list(gm.graph.nodes):
        if node.op != "call_function":
            continue
        arg = TABLE.lookup(node, modules).mode_argument
        if arg is None:
            continue
        if flag is None:
            with gm.graph.inserting_before(node), warnings.catch_warnings():
                warnings.simplefilter("ignore")     # an attribute, not a tensor: fx warns
                flag = gm.graph.get_attr("training")
        name, position = arg
        if len(node.args) > position:
            node.update_arg(position, flag)
        else:
            node.update_kwarg(name, flag)
    gm.recompile()


def layer_names(gm: fx.GraphModule) -> dict[str, str]:
    """Per node of an exported graph, the user's name of the layer it computes: the module
    owning the first parameter it reads (``layer1.0.conv1``)."""
    params = {n for n, _ in gm.named_parameters(remove_duplicate=False)}
    names = {}
    for node in gm.graph.nodes:
        read = [a.target for a in node.all_input_nodes if a.op == "get_attr" and a.target in params]
        if node.op == "call_function" and read:
            names[node.name] = read[0].rpartition(".")[0] or read[0]
    return names

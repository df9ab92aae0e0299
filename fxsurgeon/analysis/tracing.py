"""Symbolic tracing with leaf modules, autowrapped functions and readable errors.

Works like torchvision's ``feature_extraction``: a :class:`torch.fx.Tracer` whose
leaf modules and autowrapped functions the user chooses. When tracing fails the
error names the module being traced and the line of the user's code that failed,
and points at the escape hatch that can help: ``leaf_modules`` for a submodule,
``concrete_args`` or ``autowrap_functions`` for the model's own ``forward``.
The GraphModules it makes pickle like any other (``torch.save(module)``).
"""
from __future__ import annotations

import inspect
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
import torch.fx as fx
from torch import nn
from torch.nn.utils import parametrize

from ..channels.hooks import computes_tensors, quiet
from ..errors import FxSurgeonError, UntraceableModelError
from ..layers.streamed import canonical
from ..ops import TABLE

# the traced module generates its Python code when first called or printed, not when
# built: the analysis never runs it, and code generation was a fifth of analyze on small
# inputs (a torch without the lazy module: a plain one)
try:
    from torch.fx._lazy_graph_module import _LazyGraphModule
except ImportError:
    _LazyGraphModule = fx.GraphModule


def generated(gm: fx.GraphModule) -> None:
    """Generate ``gm``'s Python code now if it waits for its first call (torch.fx's lazy
    module): users compile the modules handed on to them, and
    ``torch.compile(fullgraph=True)`` cannot trace that first call."""
    real_recompile = getattr(gm, "real_recompile", None)
    if real_recompile is not None:
        real_recompile()


def _timm_fx():
    """timm's registry of modules and functions symbolic tracing must not enter, if timm is
    loaded (fxsurgeon does not import it)."""
    return sys.modules.get("timm.layers._fx")


def library_leaves() -> set[type]:
    """Module types that their library keeps from symbolic tracing."""
    reg = _timm_fx()
    return set(getattr(reg, "_leaf_modules", ())) if reg is not None else set()


def library_functions() -> tuple[Callable, ...]:
    """Functions that their library keeps from symbolic tracing (wrapped as one call)."""
    reg = _timm_fx()
    return tuple(f for f in getattr(reg, "_autowrap_functions", ()) if callable(f)) if reg is not None else ()


class Tracer(fx.Tracer):
    """A tracer that keeps the stack of modules it is inside, for error messages."""

    def __init__(self, leaf_modules: Sequence[type] = (), autowrap_functions: Sequence[Callable] = (),
                 stack_traces: bool = False):
        # the defaults let torch.fx re-create the tracer when it unpickles a GraphModule
        super().__init__(autowrap_functions=(*autowrap_functions, *library_functions()))
        self._leaf_types = tuple(leaf_modules)
        # the user's line of each node, for a refusal that names it: a third of a trace's time,
        # so recorded only when asked (fxsurgeon.apply traces again to name one)
        self.record_stack_traces = stack_traces
        self.path: list[tuple[str, type]] = []
        self._names: dict[int, str] = {}            # tensor id -> its name, for ``_named_for``
        self._named_for: nn.Module | None = None

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        """The user's leaf types; then modules whose weights are computed (parametrizations,
        a pre-hook's weight normalisation) are traced through, so the computation shows in the graph; a module
        with a rule in the op table is one call; so is one its library keeps from tracing
        (timm's registry); the rest as torch.fx decides."""
        if self._leaf_types and isinstance(m, self._leaf_types):
            return True
        if parametrize.is_parametrized(m) or (m._forward_pre_hooks and computes_tensors(m)):
            return False
        rule = TABLE.module_rule(m)
        if rule is not None:
            return rule.leaf
        if type(m) in library_leaves():
            return True
        return super().is_leaf_module(m, qualname)

    def getattr(self, attr, attr_val, parameter_proxy_cache):
        """torch.fx's, with a parameter's or buffer's name found by identity: torch.fx walks
        every parameter of the model at each read of one in a ``forward`` (quadratic in a
        weight-standardized network, where every conv reads its own weight)."""
        if not isinstance(attr_val, torch.Tensor) or self.param_shapes_constant:
            return super().getattr(attr, attr_val, parameter_proxy_cache)
        if self._named_for is not self.root:
            names = {id(p): n for n, p in self.root.named_parameters()}     # each by its first name
            if self.proxy_buffer_attributes:
                names.update({id(b): n for n, b in self.root.named_buffers() if id(b) not in names})
            self._names, self._named_for = names, self.root
        name = self._names.get(id(attr_val))
        if name is None:
            return super().getattr(attr, attr_val, parameter_proxy_cache)
        if name not in parameter_proxy_cache:
            parameter_proxy_cache[name] = self.create_proxy("get_attr", name, (), {})
        return parameter_proxy_cache[name]

    def call_module(self, m, forward, args, kwargs):
        self.path.append((self.path_of_module(m), type(m)))
        out = super().call_module(m, forward, args, kwargs)
        self.path.pop()
        return out


def _user_frame(tb) -> str:
    """The innermost frame of the traceback that is not torch's own code."""
    frames = [f for f in traceback.extract_tb(tb)
              if "/torch/fx/" not in f.filename and "/torch/_" not in f.filename
              and "fxsurgeon/analysis/tracing.py" not in f.filename]
    if not frames:
        return "unknown location"
    f = frames[-1]
    return f"{f.filename}:{f.lineno}: {(f.line or '').strip()}"


_WRAPPERS = (nn.DataParallel, nn.parallel.DistributedDataParallel)

_ROOT_HINT = ("the model's own forward cannot be traced, so it cannot be a leaf module: fix the "
              "inputs its control flow reads with concrete_args={...}, or move the branch into a "
              "function passed as autowrap_functions=[...] or into a submodule passed as a leaf module.")


def _hint(cls: type) -> str:
    return (f"pass leaf_modules=[{cls.__name__}] to treat this module as one opaque operation "
            f"(its channels are then pinned), or autowrap_functions=[...] for a free function "
            f"with data-dependent control flow.")


def refuse_wrapped(model: nn.Module) -> None:
    """Raise :class:`UntraceableModelError` for a model wrapped for data parallelism, or
    compiled (torch.compile's wrapper holds the model as ``_orig_mod``)."""
    if isinstance(model, _WRAPPERS):
        raise UntraceableModelError(
            f"the model is wrapped in {type(model).__name__}: pass the model itself (its .module); "
            f"fxsurgeon's training wrappers build DistributedDataParallel themselves (ddp=True)")
    if isinstance(model._modules.get("_orig_mod"), nn.Module):
        raise UntraceableModelError(
            "the model is compiled (torch.compile): pass the model itself (its ._orig_mod), and compile "
            "the network fxsurgeon hands back: torch.compile(nr.model) to train, surgery.module after a "
            "rewrite")


def trace(model: nn.Module, leaf_modules: Iterable[type] = (),
          autowrap_functions: Iterable[Callable] = (),
          concrete_args: dict | None = None, stack_traces: bool = False) -> fx.GraphModule:
    """Trace ``model`` into a GraphModule, or raise :class:`UntraceableModelError`. Its hooks
    do not fire (but pre-hooks that compute its weights, which are traced). ``stack_traces``
    records the user's line of each node (a third of the time)."""
    if isinstance(model, fx.GraphModule):
        return canonical(model)
    refuse_wrapped(model)
    tracer = Tracer(list(leaf_modules), list(autowrap_functions), stack_traces)
    try:
        with quiet(model), _computed_kept(model):
            graph = tracer.trace(model, concrete_args=concrete_args)
    except Exception as exc:  # noqa: BLE001 - every tracing failure gets the same explanation
        name, cls = tracer.path[-1] if tracer.path else ("", type(model))
        raise UntraceableModelError(
            f"torch.fx cannot trace module '{name or '<root>'}' ({cls.__name__}): "
            f"{type(exc).__name__}: {exc}\n  at {_user_frame(exc.__traceback__)}\n"
            f"Hint: {_hint(cls) if name else _ROOT_HINT}"
        ) from exc
    return _LazyGraphModule(tracer.root, graph, model.__class__.__name__)


@contextmanager
def _computed_kept(model: nn.Module) -> Iterator[None]:
    """Put back, after the block, the tensors pre-hooks compute (a weight-normalised
    layer's ``weight``): tracing runs those hooks on symbolic values, which they store."""
    computed = [(m, k, v) for m in model.modules() for k, v in vars(m).items() if isinstance(v, torch.Tensor)]
    try:
        yield
    finally:
        for m, k, v in computed:
            m.__dict__[k] = v


#: keyword arguments a model is analysed with where its forward takes them: a key-value
#: cache is state carried between calls, not part of the function (HuggingFace's
#: ``use_cache``, whose cache object neither front end can hold)
STATELESS = {"use_cache": False}


def stateless(model: nn.Module) -> dict:
    """The :data:`STATELESS` keyword arguments ``model``'s forward takes."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return {}
    return {k: v for k, v in STATELESS.items() if k in params}


def defaults_beyond(model: nn.Module, n_inputs: int) -> dict:
    """The ``forward`` arguments after the first ``n_inputs`` that have defaults, at their
    defaults: the example inputs do not give them, so the model is traced as called so
    (``if mask is not None:`` then takes the branch the call takes); :data:`STATELESS` ones
    at their stateless value."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return {}
    defaults = {p.name: p.default for p in params[n_inputs:]
                if p.default is not inspect.Parameter.empty
                and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return {**defaults, **{k: v for k, v in stateless(model).items() if k in defaults}}


def as_tuple(example_inputs) -> tuple:
    """Example inputs as a tuple of positional arguments (a dict is refused: it would be
    its keys)."""
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, Mapping):
        raise FxSurgeonError(f"example inputs are positional, and a dict (keys {list(example_inputs)[:5]}) "
                             f"is not taken as keyword arguments: pass (inputs,) for a forward that takes "
                             f"the dict as its argument, or the tensors in forward's order as a tuple")
    return tuple(example_inputs)

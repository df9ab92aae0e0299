"""The op table: one :class:`~fxsurgeon.ops.rule.Rule` per kind of op, found for any fx node.

Keys are module types, functions, tensor method names, or dotted names
(``"package.module.Name"``) of classes and functions from libraries fxsurgeon does not
import. A module subclass uses its base's rule as long as it does not override
``forward``; an op without a rule is :class:`~fxsurgeon.ops.rule.Opaque`.

:func:`register_op` teaches the process-wide :data:`TABLE`; ``fxs.analyze(model, x,
ops={MyLayer: rule})`` teaches one analysis only: its rules are in scope (:func:`scope`)
while that graph is analysed, rewritten or applied, and win over the table's.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from torch import fx, nn

from ..errors import FxSurgeonError
from .rule import Opaque, Rule

_OPAQUE = Opaque()


def dotted(obj) -> str:
    """``package.module.Name`` of a class or function."""
    return f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', getattr(obj, '__name__', ''))}"


class OpTable:
    """Rules by module type, function, method name or dotted name."""

    def __init__(self, rules: dict | None = None):
        self._types: dict[type, Rule] = {}
        self._functions: dict[Callable, Rule] = {}
        self._methods: dict[str, Rule] = {}
        self._dotted: dict[str, Rule] = {}
        for target, rule in (rules or {}).items():
            self.register(target, rule)

    def _tables(self) -> tuple[OpTable, ...]:
        """The tables a lookup reads, first match winning: the rules in scope, then these."""
        scoped = _SCOPE.get() if self is TABLE else None
        return (scoped, self) if scoped is not None else (self,)

    def register(self, target, rule: Rule) -> None:
        """Use ``rule`` for ``target``: a module class, a function, a tensor method name
        (``"relu"``) or the dotted name of a class or function (``"timm.layers.X"``)."""
        if not isinstance(rule, Rule):
            raise FxSurgeonError(f"register_op needs a fxsurgeon.ops.Rule, got {type(rule).__name__}")
        if isinstance(target, type):
            if not issubclass(target, nn.Module):
                raise FxSurgeonError(f"register_op: {target.__name__} is a class but not an nn.Module")
            self._types[target] = rule
        elif isinstance(target, str):
            (self._dotted if "." in target else self._methods)[target] = rule
        elif callable(target):
            self._functions[target] = rule
        else:
            raise FxSurgeonError(f"register_op: cannot register {target!r}: give a module class, "
                                 f"a function, a tensor method name or a dotted name")

    def module_rule(self, module: nn.Module) -> Rule | None:
        """The rule of ``module``'s type, or of a base whose ``forward`` it keeps; None if none."""
        cls = type(module)
        for base in cls.__mro__:
            if base is nn.Module:
                break
            rule = next((r for t in self._tables() for r in (t._types.get(base), t._dotted.get(dotted(base)))
                         if r is not None), None)
            if rule is not None:
                return rule if base is cls or base.forward is cls.forward else None
        return None

    def function_rule(self, fn) -> Rule | None:
        for t in self._tables():
            try:
                rule = t._functions.get(fn)
            except TypeError:          # an unhashable callable
                rule = None
            rule = rule or t._dotted.get(dotted(fn))
            if rule is not None:
                return rule
        return None

    def lookup(self, node: fx.Node, modules: dict[str, nn.Module]) -> Rule:
        """The rule of a ``call_*`` node (:class:`Opaque` where there is none)."""
        if node.op == "call_module":
            rule = self.module_rule(modules[node.target])
        elif node.op == "call_function":
            rule = self.function_rule(node.target)
        else:
            rule = next((r for t in self._tables() if (r := t._methods.get(node.target)) is not None), None)
        return rule or _OPAQUE


#: the table every pass reads
TABLE = OpTable()
#: the rules of the analysis in hand (see :func:`scope`), read before :data:`TABLE`'s
_SCOPE: ContextVar[OpTable | None] = ContextVar("fxsurgeon_ops", default=None)


def scoped(rules: dict | OpTable | None) -> OpTable | None:
    """``rules`` (``{target: rule}``, targets as :func:`register_op` takes them) as a table
    of their own, checked now; None for none."""
    if rules is None or isinstance(rules, OpTable):
        return rules
    if not isinstance(rules, dict):
        raise FxSurgeonError(f"ops must be a dict {{target: fxsurgeon.ops.Rule}}, got {type(rules).__name__}")
    return OpTable(rules)


#: the GraphModule meta key holding the rules it was analysed with (a rewrite's network
#: keeps them, so that analysing it again reads them)
META = "fxs_ops"


def rules_of(module) -> OpTable | None:
    """The rules ``module`` (a GraphModule fxsurgeon made) was analysed with, if any."""
    return module.meta.get(META) if isinstance(module, fx.GraphModule) else None


@contextmanager
def scope(table: OpTable | None) -> Iterator[None]:
    """Within it, :data:`TABLE` reads ``table``'s rules first (one analysis's ``ops``);
    ``None`` leaves the rules in scope as they are. Per thread and task, as a
    :class:`~contextvars.ContextVar` is."""
    if table is None:
        yield
        return
    token = _SCOPE.set(table)
    try:
        yield
    finally:
        _SCOPE.reset(token)


def register_op(target, rule: Rule) -> None:
    """Teach fxsurgeon an op: from now on ``target`` is analysed, costed, planned,
    rewritten and rescaled by ``rule``.

    ``target`` is a module class (its instances become single calls when traced), a
    function, a tensor method name such as ``"relu"``, or the dotted name of a class
    or function from a library you would rather not import (``"mylib.layers.Norm"``).
    ``rule`` is one of the rules in :mod:`fxsurgeon.ops` (``PerChannel``, ``Layer``,
    ``Carry``, ``Opaque``, ...) or your own subclass of :class:`~fxsurgeon.ops.Rule`.
    See docs/ops.md.
    """
    TABLE.register(target, rule)

"""The op table: everything fxsurgeon knows about each kind of op, in one rule per op.

Every pass (identity propagation, shapes, cost, liveliness, activations, rescaling,
rewriting) asks :data:`TABLE` for a node's :class:`Rule`; none keeps a list of op names
of its own. :func:`register_op` teaches fxsurgeon a new op.
"""
from .aten import register_aten
from .attention import DotProductAttention, HeadAttention, MultiheadAttention
from .builtin import register_builtins
from .elementwise import Carry, Couple
from .layers import Addmm, Embedding, FunctionalEmbedding, FunctionalLayer, Layer, Matmul, PReLU
from .libraries import NormAct, register_libraries
from .movement import Chunk, Concat, Move, Pad, Reshape, Select, Spatial, Split, Squeeze
from .norms import Norm, PerChannel
from .reductions import Reduce, Softmax
from .rule import Opaque, Rule
from .table import TABLE, OpTable, register_op

register_builtins(TABLE)
register_libraries(TABLE)
register_aten(TABLE)

__all__ = ["TABLE", "OpTable", "register_op", "Rule", "Opaque", "Carry", "Couple", "Move", "Reshape",
           "Chunk", "Split", "Squeeze", "Select", "Pad", "Concat", "Spatial", "Reduce", "Softmax",
           "PerChannel", "Norm", "NormAct", "Layer", "FunctionalLayer", "Embedding", "FunctionalEmbedding",
           "Addmm", "Matmul", "PReLU", "MultiheadAttention",
           "HeadAttention", "DotProductAttention"]

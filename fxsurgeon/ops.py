"""What each fx node does to channels: the classification table of the analyser.

``classify`` maps a node to one of a few behaviours; unknown ops are ``"opaque"``,
which pins every channel they touch (pinned is safe, a wrong "free" is a bug).
"""
from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

PRODUCER_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                    nn.ConvTranspose3d, nn.Linear, nn.Embedding)
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
               nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
UNARY_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
                 nn.Mish, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.Softplus,
                 nn.Hardtanh, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
                 nn.AlphaDropout, nn.Identity, nn.Softsign, nn.Tanhshrink, nn.Threshold)
SPATIAL_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d,
                   nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
                   nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
                   nn.AdaptiveMaxPool3d, nn.Upsample, nn.UpsamplingNearest2d,
                   nn.UpsamplingBilinear2d, nn.LPPool2d)
MOVE_MODULES = (nn.Flatten, nn.Unflatten, nn.PixelShuffle, nn.PixelUnshuffle, nn.ChannelShuffle,
                nn.ZeroPad2d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d)
SOFTMAX_MODULES = (nn.Softmax, nn.LogSoftmax)

UNARY_FUNCTIONS = {F.relu, F.relu6, torch.relu, F.gelu, F.silu, F.mish, F.hardswish,
                   F.hardsigmoid, torch.sigmoid, F.sigmoid, torch.tanh, F.tanh, F.dropout,
                   F.dropout1d, F.dropout2d, F.dropout3d, F.leaky_relu, F.elu, F.selu,
                   F.hardtanh, F.softplus, torch.clamp, torch.clip, operator.neg, torch.exp,
                   torch.abs, torch.sqrt, torch.neg, F.alpha_dropout, operator.pos}
UNARY_FUNCTION_NAMES = {"stochastic_depth"}  # torchvision.ops, wrapped for fx
UNARY_METHODS = {"relu", "relu_", "sigmoid", "sigmoid_", "tanh", "clamp", "clamp_", "clip",
                 "contiguous", "clone", "detach", "float", "double", "half", "to", "type_as",
                 "exp", "sqrt", "abs", "neg", "hardtanh_", "requires_grad_", "cpu", "cuda"}
BINARY_FUNCTIONS = {operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd,
                    operator.isub, operator.imul, operator.itruediv, torch.add, torch.sub,
                    torch.mul, torch.div, torch.maximum, torch.minimum, torch.true_divide}
BINARY_METHODS = {"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_"}
MOVE_FUNCTIONS = {torch.flatten, torch.reshape, torch.permute, torch.transpose, torch.cat,
                  torch.concat, torch.concatenate, torch.stack, torch.chunk, torch.split,
                  torch.squeeze, torch.unsqueeze, torch.narrow, torch.roll, torch.flip,
                  torch.movedim, torch.swapaxes, F.pad, F.pixel_shuffle, F.pixel_unshuffle,
                  F.channel_shuffle, torch.channel_shuffle, operator.getitem, torch.unbind,
                  torch.unflatten}
MOVE_METHODS = {"view", "reshape", "permute", "transpose", "flatten", "squeeze", "unsqueeze",
                "expand", "repeat", "chunk", "split", "narrow", "roll", "flip", "unflatten",
                "movedim", "swapaxes", "unbind", "expand_as", "view_as", "reshape_as"}
SPATIAL_FUNCTIONS = {F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d,
                     F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
                     F.adaptive_avg_pool3d, F.adaptive_max_pool1d, F.adaptive_max_pool2d,
                     F.adaptive_max_pool3d, F.interpolate, F.upsample}
REDUCE_FUNCTIONS = {torch.mean, torch.sum, torch.amax, torch.amin, torch.std, torch.var,
                    torch.logsumexp}
REDUCE_METHODS = {"mean", "sum", "amax", "amin", "std", "var", "logsumexp"}
SOFTMAX_FUNCTIONS = {F.softmax, F.log_softmax, torch.softmax, torch.log_softmax}
SOFTMAX_METHODS = {"softmax", "log_softmax"}
MATMUL_FUNCTIONS = {torch.matmul, operator.matmul, torch.bmm}
MATMUL_METHODS = {"matmul", "bmm"}
NORM_FUNCTIONS = {F.batch_norm: "norm:batch", F.layer_norm: "norm:layer",
                  F.group_norm: "norm:group", F.instance_norm: "norm:batch"}
PRODUCER_FUNCTIONS = {F.linear: "linear", F.conv1d: "conv", F.conv2d: "conv", F.conv3d: "conv"}

#: ops that select a relative share of the channel axis; other selections with literal
#: bounds on a channel axis pin it.
RELATIVE_SELECTIONS = {torch.chunk, "chunk"}


def _has_tensor(value) -> bool:
    return any(isinstance(v, torch.Tensor) for v in torch.utils._pytree.tree_leaves(value))


def classify(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    """The channel behaviour of ``node``, one of the kinds handled by the propagation.

    Ops that return no tensor are ``"scalar"`` once shapes are known (``meta["fxs_value"]``).
    """
    if node.op in ("placeholder", "get_attr", "output"):
        return node.op
    if "fxs_value" in node.meta and not _has_tensor(node.meta["fxs_value"]):
        return "scalar"     # before shape propagation this is unknown: ops classify as if tensors
    if node.op == "call_module":
        m = modules[node.target]
        if isinstance(m, PRODUCER_MODULES):
            return "producer:" + ("linear" if isinstance(m, nn.Linear) else
                                  "embedding" if isinstance(m, nn.Embedding) else "conv")
        if isinstance(m, BATCH_NORMS):
            return "norm:batch"
        if isinstance(m, nn.LayerNorm):
            return "norm:layer"
        if isinstance(m, nn.GroupNorm):
            return "norm:group"
        if isinstance(m, UNARY_MODULES):
            return "unary"
        if isinstance(m, nn.PReLU):
            return "prelu"
        if isinstance(m, SPATIAL_MODULES):
            return "spatial"
        if isinstance(m, MOVE_MODULES):
            return "move"
        if isinstance(m, SOFTMAX_MODULES):
            return "softmax"
        if isinstance(m, nn.MultiheadAttention):
            return "mha"
        return "opaque"
    t = node.target
    if node.op == "call_function":
        if t in UNARY_FUNCTIONS or getattr(t, "__name__", None) in UNARY_FUNCTION_NAMES:
            return "unary"
        if t in BINARY_FUNCTIONS:
            return "binary"
        if t in MOVE_FUNCTIONS:
            return "move"
        if t in SPATIAL_FUNCTIONS:
            return "spatial"
        if t in REDUCE_FUNCTIONS:
            return "reduce"
        if t in SOFTMAX_FUNCTIONS:
            return "softmax"
        if t in MATMUL_FUNCTIONS:
            return "matmul"
        if t in NORM_FUNCTIONS:
            return NORM_FUNCTIONS[t]
        if t in PRODUCER_FUNCTIONS:
            return "fproducer:" + PRODUCER_FUNCTIONS[t]
        return "opaque"
    if t in UNARY_METHODS:
        return "unary"
    if t in BINARY_METHODS:
        return "binary"
    if t in MOVE_METHODS:
        return "move"
    if t in REDUCE_METHODS:
        return "reduce"
    if t in SOFTMAX_METHODS:
        return "softmax"
    if t in MATMUL_METHODS:
        return "matmul"
    return "opaque"


def describe(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    """A short human name of what ``node`` runs, for pin reasons."""
    if node.op == "call_module":
        return f"{node.target} ({type(modules[node.target]).__name__})"
    if node.op == "call_method":
        return f".{node.target}() at {node.name}"
    return f"{getattr(node.target, '__name__', str(node.target))}() at {node.name}"

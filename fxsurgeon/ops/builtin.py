"""The rules of PyTorch's own ops, of fxsurgeon's own layers, and of a few library ones."""
from __future__ import annotations

import builtins
import operator

import torch
import torch.nn.functional as F
from torch import nn

from ..layers.folded import FoldedConstant, FoldedConv
from ..layers.gate import Gate
from ..layers.partitioned import Partitioned
from .attention import DotProductAttention, MultiheadAttention
from .elementwise import Bounded, Carry, Couple, Glu, Pow, StochasticDepth
from .layers import Embedding, FunctionalLayer, Layer, Matmul, PReLU
from .movement import Chunk, Concat, Metadata, Move, Pad, Reshape, Select, Spatial, Split, Squeeze, Unbind
from .norms import Norm
from .reductions import Reduce, Softmax
from .rewritten import Blocks, Folded, Judge, Restricted
from .table import OpTable


def _existing(module, *names):
    return [getattr(module, n) for n in names if hasattr(module, n)]


def register_builtins(table: OpTable) -> None:
    """Fill ``table`` with the rules of torch's modules, functions and tensor methods."""
    def each(targets, rule):
        for t in targets:
            table.register(t, rule)

    # elementwise: f(c·x) = c·f(x) for c > 0 (rescaling passes through these)
    homogeneous = Carry(homogeneous=True)
    each([nn.ReLU, nn.LeakyReLU, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
          F.relu, torch.relu, F.leaky_relu, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d,
          "relu", "relu_", "contiguous", "clone", "detach"], homogeneous)
    each(["to", "float", "double"], Carry(homogeneous=True, keeps_dtype=False))
    each(["half", "type_as", "cpu", "cuda"], Carry(keeps_dtype=False))
    each([nn.ReLU6, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish, nn.Hardsigmoid,
          nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Hardtanh, nn.AlphaDropout, nn.Softsign, nn.Tanhshrink,
          nn.Threshold,
          F.relu6, F.gelu, F.silu, F.mish, F.hardswish, F.hardsigmoid, torch.sigmoid, F.sigmoid,
          torch.tanh, F.tanh, F.elu, F.selu, F.hardtanh, F.softplus,
          operator.neg, torch.exp, torch.abs, torch.sqrt, torch.neg, F.alpha_dropout, operator.pos,
          "sigmoid", "sigmoid_", "tanh", "exp", "sqrt", "abs", "neg",
          "hardtanh_", "requires_grad_", torch.square, "square", "square_"], Carry())
    each([torch.clamp, torch.clip, "clamp", "clamp_", "clip", "clip_"], Bounded())
    each([operator.pow, operator.ipow, torch.pow, "pow", "pow_"], Pow())
    table.register("torchvision.ops.stochastic_depth.stochastic_depth", StochasticDepth())
    each([operator.add, operator.sub, operator.iadd, operator.isub, torch.add, torch.sub,
          "add", "add_", "sub", "sub_"], Couple("residual"))
    each([operator.mul, operator.imul, torch.mul, "mul", "mul_"], Couple("gate", keeps_zero=(0, 1)))
    each([operator.truediv, operator.itruediv, torch.div, torch.true_divide, "div", "div_"],
         Couple("gate", keeps_zero=(0,)))
    each([torch.maximum, torch.minimum], Couple("gate"))
    each([nn.GLU, F.glu], Glu())

    # data movement
    move = Move()
    each([nn.Flatten, nn.Unflatten, nn.PixelShuffle, nn.PixelUnshuffle, nn.ChannelShuffle,
          torch.flatten, torch.permute, torch.transpose, torch.stack, torch.unsqueeze,
          torch.roll, torch.flip, torch.movedim, torch.swapaxes, F.pixel_shuffle, F.pixel_unshuffle,
          F.channel_shuffle, torch.channel_shuffle, torch.unflatten,
          "permute", "transpose", "flatten", "unsqueeze", "expand", "repeat", "roll", "flip",
          "unflatten", "movedim", "swapaxes"], move)
    each([torch.unbind, "unbind"], Unbind())
    each(_existing(nn, "ReflectionPad1d", "ReflectionPad2d", "ReflectionPad3d", "ReplicationPad1d",
                   "ReplicationPad2d", "ReplicationPad3d", "CircularPad1d", "CircularPad2d",
                   "CircularPad3d"), move)
    each([nn.ZeroPad2d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d, F.pad,
          *_existing(nn, "ZeroPad1d", "ZeroPad3d")], Pad())
    each([torch.reshape, "reshape"], Reshape())
    each([torch.squeeze, "squeeze"], Squeeze())
    table.register("view", Reshape(tag_method="reshape"))
    table.register("expand_as", Move(shape_only=True))
    table.register("view_as", Move(shape_only=True, tag_method="reshape_as"))
    table.register("reshape_as", Move(shape_only=True))
    each([torch.cat, torch.concat, torch.concatenate], Concat())
    each(["size", "dim", builtins.getattr], Metadata())
    each([torch.chunk, "chunk"], Chunk())
    each([torch.split, "split"], Split())
    each([operator.getitem], Select())
    each([torch.narrow, "narrow"], Select(narrow=True))
    each([nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
          nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
          nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Upsample, nn.UpsamplingNearest2d,
          nn.UpsamplingBilinear2d, nn.LPPool2d,
          F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
          F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.adaptive_max_pool1d,
          F.adaptive_max_pool2d, F.adaptive_max_pool3d, F.interpolate, F.upsample], Spatial())

    # statistics
    each([torch.mean, torch.sum, torch.amax, torch.amin, torch.std, torch.var, torch.logsumexp,
          "mean", "sum", "amax", "amin", "std", "var", "logsumexp"], Reduce())
    each([nn.Softmax, nn.LogSoftmax, F.softmax, F.log_softmax, torch.softmax, torch.log_softmax,
          "softmax", "log_softmax"], Softmax())
    batch = Norm("batch")
    each([nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.InstanceNorm1d,
          nn.InstanceNorm2d, nn.InstanceNorm3d, F.batch_norm, F.instance_norm], batch)
    each([nn.LayerNorm, F.layer_norm, *_existing(nn, "RMSNorm"), *_existing(F, "rms_norm")], Norm("layer"))
    each([nn.GroupNorm, F.group_norm], Norm("group"))

    # layers with weights
    each([nn.Conv1d, nn.Conv2d, nn.Conv3d], Layer())
    each([nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d], Layer(transposed=True))
    table.register(nn.Linear, Layer(linear=True))
    each([F.conv1d, F.conv2d, F.conv3d], FunctionalLayer())
    each([F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d], FunctionalLayer(transposed=True))
    table.register(F.linear, FunctionalLayer(linear=True))
    table.register(nn.Embedding, Embedding())
    each([torch.matmul, operator.matmul, torch.bmm, "matmul", "bmm"], Matmul())
    table.register(nn.PReLU, PReLU())
    table.register(nn.MultiheadAttention, MultiheadAttention())
    table.register(F.scaled_dot_product_attention, DotProductAttention())

    # the layers rewrites put in
    table.register(FoldedConstant, Folded())
    table.register(FoldedConv, Restricted())
    table.register(Partitioned, Blocks())
    table.register(Gate, Judge())

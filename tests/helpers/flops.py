"""PyTorch's own count of multiply-accumulates, to check fxsurgeon's against."""
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode


def flop_counter_macs(model: nn.Module, x: torch.Tensor) -> int:
    """PyTorch's own dispatch-level count; fused attention kernels are switched off
    because FlopCounterMode cannot see inside them."""
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return counter.get_total_flops() // 2

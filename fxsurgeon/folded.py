"""Where the folded layers were before the package was grouped by stage: networks pickled
then name this module."""
from .layers.folded import FoldedConstant, FoldedConv

__all__ = ["FoldedConstant", "FoldedConv"]

"""The importance criteria pruning ranks by (see :mod:`fxsurgeon.judging.importance`)."""
from .judging.importance import CRITERIA, activation, bn_scale, magnitude, random, taylor

__all__ = ['CRITERIA', 'activation', 'bn_scale', 'magnitude', 'random', 'taylor']

"""The one-cycle shape DemP gives its regularization and its noise."""
from __future__ import annotations

import math


def one_cycle(step: int, total: int, rise: float = 0.3) -> float:
    """0 at step 0, rising linearly to 1 at ``rise · total``, then a cosine back to 0 at
    ``total`` (and 0 after it)."""
    if total <= 0 or step >= total:
        return 0.0
    top = rise * total
    if step < top:
        return step / top
    return 0.5 * (1 + math.cos(math.pi * (step - top) / (total - top)))

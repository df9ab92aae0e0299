"""Where :class:`Partitioned` was before the package was grouped by stage: networks pickled
then name this module."""
from .layers.partitioned import Partitioned

__all__ = ["Partitioned"]

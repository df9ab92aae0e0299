"""Where the tracer was before the package was grouped by stage: a GraphModule pickles the
class that traced it, so networks pickled then name ``fxsurgeon.tracing._Tracer``."""
from .analysis.tracing import Tracer as _Tracer

__all__ = ["_Tracer"]

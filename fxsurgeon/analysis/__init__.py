"""Analysis: a model and example inputs in, a :class:`~.graph.ChannelGraph` out.

Traces the model (:mod:`.tracing`, or :mod:`.export_frontend` through ``torch.export``),
propagates shapes (:mod:`.shapes`) and channel identities (:mod:`.propagation`) through the
op table, groups coupled channels into dimensions (:mod:`.dimension`), counts cost exactly
(:mod:`.cost`), and shows the result (:mod:`.report`, :mod:`.drawing` laid out by :mod:`.layout`).
"""

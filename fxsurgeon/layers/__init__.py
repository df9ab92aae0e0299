"""The modules a rewrite puts into networks, and the runtime of streamed networks.

Takes nothing from later stages; ops rules and rewrites build on it. Gives
:class:`~.partitioned.Partitioned` (the NR-CR / NR-CA layers), the folded constants of
removed channels (:mod:`.folded`) and what a streamed network calls at run time
(:mod:`.streamed`: parts, joins, and its plain form).
"""

"""Planning: a ChannelGraph and the alive channels in, a :class:`~.planner.Plan` out.

:mod:`.planner` gives every free dimension its new width (one shared α for rejuvenation,
or what pruning keeps); :mod:`.budget` chooses channels to keep under a cost budget.
"""

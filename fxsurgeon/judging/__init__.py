"""Judging: a ChannelGraph in, which channels are alive and how much each matters.

:mod:`.liveliness` reads the per-channel scales that judge channels (the paper's dead
test), :mod:`.activations` watches activations (DemP's test), :mod:`.importance` scores
channels for pruning to a budget, :mod:`.fixed` names the dimensions a method keeps;
:mod:`.reference` runs the network with removed channels' scales at zero (what a removal
keeps), from which :mod:`.modulated` finds the dead channels that cannot go.
"""

"""Training methods: optimizer wrappers that operate on the network while it trains.

:mod:`.base` is what they share (the one model object of a run, events, checkpoints);
:mod:`.rejuvenation` is Neural Rejuvenation, :mod:`.demp` DemP and pruning while training;
:mod:`.optimizer_state` carries an optimizer across a surgery; :mod:`.schedules` DemP's
one-cycle shape. Each event is an analysis, a plan and a surgery of the stages before.
"""

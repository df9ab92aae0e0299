"""Persistence: surgeries and checkpoints as plain data, read back with every size checked.

:mod:`.fileformat` checks what a file holds before anything is built from it;
:mod:`.history` records a surgery and replays it on the model it started from;
:mod:`.checkpoint` is ``fxsurgeon.save`` / ``fxsurgeon.load`` and reading user checkpoints.
"""

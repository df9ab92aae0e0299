"""The ``fxsurgeon train`` / ``demo`` harness: runs of methods and seeds, with tables and plots.

Nothing in the library imports it. :mod:`.loop` is the training loop, :mod:`.recipe` its
hyper-parameters, :mod:`.state` where a run stands between epochs, :mod:`.methods` the
methods it compares, :mod:`.runs` runs of several methods and seeds, with :mod:`.data`,
:mod:`.devices`, :mod:`.outdir`, :mod:`.plots` and :mod:`.timing`.
"""

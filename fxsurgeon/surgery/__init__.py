"""Surgery: a ChannelGraph and a Plan in, a :class:`~.rewriter.Surgery` out.

:mod:`.rewriter` builds the new network and its index maps; :mod:`.folding` folds what
removed channels still emit; :mod:`.selfcheck` proves the function kept (against
:mod:`fxsurgeon.judging.reference`); :mod:`.rescaling` lifts small scales; :mod:`.streams`
holds generations apart; :mod:`.deploy` turns a rewrite back into standard layers (``fxsurgeon.export``).
"""

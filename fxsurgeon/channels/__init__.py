"""The vocabulary every pass speaks: channel identities and the fx nodes that carry them.

Takes nothing from later stages. Gives tag tensors (:mod:`.tags`), the union-find over
identities (:mod:`.unionfind`), readers of fx nodes (:mod:`.nodes`), where a layer's weight
comes from (:mod:`.provenance`), eval mode for a block (:mod:`.modes`) and the named
records of what the identity walk learns about channels (:mod:`.facts`).
"""

"""Chapter 2: a Vision Transformer whose feed-forward is an MLP or a KAN.

* :mod:`labkit.vit.model`: ``VisionTransformer`` (the seed's options), the ffn registry
  (:func:`make_ffn`: "mlp", "chebykan", "kan"), the seed's factory functions and small configs;
* :mod:`labkit.vit.accounting`: parameters, FLOPs (``FlopCounterMode``), peak memory, throughput,
  and the seed's flawed parameter-counting rule for comparison;
* :mod:`labkit.vit.train`: ``python -m labkit.vit.train`` and :func:`labkit.vit.train.train`;
* :mod:`labkit.vit.bench`: the ``vit`` benchmark suite.
"""
from labkit.vit.model import (FACTORIES, Attention, Block, DropPath, KANFeedForward, Mlp, PatchEmbed,
                              VisionTransformer, create_model, ffn_kinds, make_ffn, register_ffn)

__all__ = ["FACTORIES", "Attention", "Block", "DropPath", "KANFeedForward", "Mlp", "PatchEmbed",
           "VisionTransformer", "create_model", "ffn_kinds", "make_ffn", "register_ffn"]

"""Chapter 2: a Vision Transformer whose feed-forward is an MLP or a KAN.

* :mod:`labkit.vit.model`: ``VisionTransformer`` (the seed's options), the ffn registry
  (:func:`make_ffn`: "mlp", "chebykan", "kan"), the seed's factory functions and small configs;
* :mod:`labkit.vit.accounting`: parameters, FLOPs (``FlopCounterMode``), peak memory, throughput,
  the seed's flawed parameter-counting rule for comparison, and the hidden width that gives a KAN
  block the MLP block's parameter count (:func:`matched_mlp_ratio`);
* :mod:`labkit.vit.seed_report`: the seed's reported table as data, and the same models recounted;
* :mod:`labkit.vit.train`: ``python -m labkit.vit.train``, :func:`labkit.vit.train.train` and
  :func:`labkit.vit.train.config_from_profile`;
* :mod:`labkit.vit.bench`: the ``vit`` benchmark suite.
"""
from labkit.vit.model import (FACTORIES, Attention, Block, DropPath, KANFeedForward, Mlp, PatchEmbed,
                              VisionTransformer, create_model, ffn_kinds, make_ffn, register_ffn)

__all__ = ["FACTORIES", "Attention", "Block", "DropPath", "KANFeedForward", "Mlp", "PatchEmbed",
           "VisionTransformer", "create_model", "ffn_kinds", "make_ffn", "register_ffn"]

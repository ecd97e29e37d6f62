"""Chapter 5: tensor-train embeddings (5a) and the kernel toolkit (5b)."""
from labkit.htt.ops import tt_lookup
from labkit.htt.tt import (HolographicTTEmbedding, complex_to_real_cores, factorize, tt_lookup_reference, tt_shapes,
                           tt_to_dense)

__all__ = ["HolographicTTEmbedding", "complex_to_real_cores", "factorize", "tt_lookup", "tt_lookup_reference",
           "tt_shapes", "tt_to_dense"]

"""Chapter 5: tensor-train embeddings (5a) and the kernel toolkit (5b)."""
from labkit.htt.arssm import AdaptiveRankSemiseparableLayer, binary_gate, gate_samples, seed_gumbel_gate
from labkit.htt.logmatmul import (hmm_forward_log, hmm_forward_scaled, log_matmul, log_matmul_maxonly,
                                  log_matmul_reference)
from labkit.htt.ops import tt_lookup
from labkit.htt.presets import (Phase1Config, Phase1LM, build_model, get_preset, list_presets,
                                measure_preset_memory, print_preset_comparison)
from labkit.htt.recovery import NumericalInstabilityError, Phase1ErrorRecovery, RecoveryConfig
from labkit.htt.scan import linear_scan, linear_scan_reference
from labkit.htt.tt import (HolographicTTEmbedding, complex_to_real_cores, factorize, tt_lookup_reference, tt_shapes,
                           tt_to_dense)

__all__ = ["AdaptiveRankSemiseparableLayer", "HolographicTTEmbedding", "NumericalInstabilityError", "Phase1Config",
           "Phase1ErrorRecovery", "Phase1LM", "RecoveryConfig", "binary_gate", "build_model", "complex_to_real_cores",
           "factorize", "gate_samples", "get_preset", "hmm_forward_log", "hmm_forward_scaled", "linear_scan",
           "linear_scan_reference", "list_presets", "log_matmul", "log_matmul_maxonly", "log_matmul_reference",
           "measure_preset_memory", "print_preset_comparison", "seed_gumbel_gate", "tt_lookup",
           "tt_lookup_reference", "tt_shapes", "tt_to_dense"]

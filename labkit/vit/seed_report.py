"""What design document ``001`` reported for its ViTs on tf_flowers, kept as data to compare against.

These are the seed's claims, not measurements of ours: its comparison table (training minutes,
validation accuracy after 10 epochs, "Total Params (M)", "Total FLOPs (GFLOPs)") and, from the
per-run summaries above that table, the trainable-parameter counts. Chapter 2 recounts every one
of these models (:func:`comparison_rows`) and explains each difference:

* "Total Params" comes from a per-module summary that adds up only attributes named ``weight``
  and ``bias`` (:func:`labkit.vit.accounting.seed_parameter_count`), so it skips the class token,
  the position embedding and every KAN coefficient: the KAN models look three times *smaller*.
* "Trainable params" is the classification head alone (plus the representation layer of the
  in21k variants): the backbone was frozen and randomly initialised, so the accuracies near 50%
  are those of a linear probe on random features, for both feed-forwards.
* The seed's GFLOPs count multiply-adds (its counting tool's convention); ``FlopCounterMode``
  counts 2 FLOPs per multiply-add. For the MLP models the two agree (B/16: 17.57 against our
  17.56 G multiply-adds). For the KAN models the KAN layers' work is missing altogether (B/16:
  6.45 against 51.0), close to the MLP model without its feed-forward layers (6.41): the seed's
  tool counted ``nn.Linear`` and ``nn.Conv2d`` modules only.
  The L/16 row says 64.58 where the run's own summary printed 61.58.
"""
from __future__ import annotations

# label -> the factory the seed's runs used (5 classes: tf_flowers)
SEED_MODELS = {"B/16": "vit_base_patch16_224", "B/32": "vit_base_patch32_224",
               "L/16": "vit_large_patch16_224", "L/32": "vit_large_patch32_224_in21k",
               "H/14": "vit_huge_patch14_224_in21k"}

# (label, ffn) -> the seed's figures; ffn "chebykan" is the seed's "KAN" design (ChebyKAN, degree 3)
SEED_TABLE = {
    ("B/16", "mlp"): dict(minutes=11.87, valid_acc=0.540, params_m=85.65, trainable=3_845, gflops=17.57),
    ("B/16", "chebykan"): dict(minutes=19.52, valid_acc=0.462, params_m=28.98, trainable=3_845, gflops=6.45),
    ("B/32", "mlp"): dict(minutes=9.33, valid_acc=0.506, params_m=87.42, trainable=3_845, gflops=4.41),
    ("B/32", "chebykan"): dict(minutes=12.00, valid_acc=0.475, params_m=30.75, trainable=3_845, gflops=1.59),
    ("L/16", "mlp"): dict(minutes=20.74, valid_acc=0.535, params_m=303.10, trainable=5_125, gflops=64.58),
    ("L/16", "chebykan"): dict(minutes=40.20, valid_acc=0.490, params_m=101.65, trainable=5_125, gflops=22.01),
    ("L/32", "mlp"): dict(minutes=12.46, valid_acc=0.506, params_m=306.51, trainable=1_054_725, gflops=15.38),
    ("L/32", "chebykan"): dict(minutes=21.74, valid_acc=0.454, params_m=105.06, trainable=1_054_725, gflops=5.34),
    ("H/14", "mlp"): dict(minutes=42.46, valid_acc=0.499, params_m=632.08, trainable=1_646_085, gflops=167.35),
    ("H/14", "chebykan"): dict(minutes=92.89, valid_acc=0.465, params_m=212.45, trainable=1_646_085, gflops=59.77),
}


def recount(label: str, ffn: str, num_classes: int = 5, image: int = 224) -> dict:
    """One of the seed's models (``label`` as in :data:`SEED_MODELS`) built on the meta device and counted.

    Returns ``model`` (the factory), ``params`` (every parameter), ``seed_rule_params`` and
    ``seed_rule_missed`` (:func:`labkit.vit.accounting.seed_parameter_count`), ``head_params`` (the
    head, plus the representation layer where there is one: what the seed trained) and
    ``flops_per_image`` of the forward pass (2 per multiply-add).
    """
    import torch

    from labkit.vit.accounting import count_flops, count_parameters, seed_parameter_count
    from labkit.vit.model import create_model

    factory = SEED_MODELS[label]
    with torch.device("meta"):
        model = create_model(factory, ffn=ffn, num_classes=num_classes)
    seed_rule = seed_parameter_count(model)
    head = sum(p.numel() for m in (model.head, getattr(model, "pre_logits", None)) if m is not None
               for p in m.parameters())
    return dict(model=factory, params=count_parameters(model)["total"], seed_rule_params=seed_rule["total"],
                seed_rule_missed=seed_rule["missed"], head_params=head,
                flops_per_image=count_flops(model, (1, 3, image, image))["per_image"])


def comparison_rows(num_classes: int = 5, image: int = 224) -> list[dict]:
    """One row per seed model: the seed's figures beside ours (:func:`recount`).

    Ours: ``params_m`` (every parameter), ``seed_rule_m`` (the seed's rule applied to our model: it
    should reproduce the seed's column), ``head_params`` (what the seed trained), ``gflops`` (2 per
    multiply-add) and ``gmacs`` (half of it: the seed's unit).
    """
    rows = []
    for (label, ffn), seed in SEED_TABLE.items():
        ours = recount(label, ffn, num_classes, image)
        flops = ours["flops_per_image"]
        rows.append(dict(model=f"ViT-{label}", ffn=ffn, seed_params_m=seed["params_m"],
                         params_m=ours["params"] / 1e6, seed_rule_m=ours["seed_rule_params"] / 1e6,
                         seed_trainable=seed["trainable"], head_params=ours["head_params"],
                         seed_gflops=seed["gflops"], gmacs=flops / 2e9, gflops=flops / 1e9,
                         seed_valid_acc=seed["valid_acc"], seed_minutes=seed["minutes"]))
    return rows


__all__ = ["SEED_MODELS", "SEED_TABLE", "comparison_rows", "recount"]

"""Tests of chapter 2's ViT (labkit.vit.model) and its accounting (labkit.vit.accounting), CPU, small sizes."""
import pytest
import torch
from torch import nn

from labkit.kan.layers import ChebyKANLayer, KANLinear
from labkit.vit.accounting import count_flops, count_parameters, seed_parameter_count
from labkit.vit.model import FACTORIES, Attention, VisionTransformer, create_model, ffn_kinds, make_ffn, register_ffn

SMALL = dict(img_size=16, patch_size=4, in_c=3, num_classes=5, embed_dim=32, depth=2, num_heads=4)


@pytest.fixture(autouse=True)
def _torch_path(monkeypatch):
    monkeypatch.setenv("LABKIT_BACKEND", "torch")  # the Triton interpreter would crawl; kernels are tested in ch. 1


EXPECTED = {  # factory: (patches + class token, width, depth, classes, representation layer)
    "vit_base_patch16_224": (197, 768, 12, 1000, False), "vit_base_patch16_224_in21k": (197, 768, 12, 21843, True),
    "vit_base_patch32_224": (50, 768, 12, 1000, False), "vit_base_patch32_224_in21k": (50, 768, 12, 21843, True),
    "vit_large_patch16_224": (197, 1024, 24, 1000, False),
    "vit_large_patch16_224_in21k": (197, 1024, 24, 21843, True),
    "vit_large_patch32_224_in21k": (50, 1024, 24, 21843, True),
    "vit_huge_patch14_224_in21k": (257, 1280, 32, 21843, True),
    "vit_tiny_patch4_28": (50, 192, 6, 10, False), "vit_tiny_patch4_32": (65, 192, 6, 10, False),
}


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_factories_on_meta(name):
    tokens, width, depth, classes, logits = EXPECTED[name]
    with torch.device("meta"):
        model = create_model(name)
        c, s = model.patch_embed.in_c, model.patch_embed.img_size
        out = model.eval()(torch.empty(2, c, *s))
    assert out.shape == (2, classes) and model.pos_embed.shape == (1, tokens, width)
    assert len(model.blocks) == depth and model.has_logits == logits
    assert model.head.in_features == (width if not logits else model.pre_logits.fc.out_features)


def test_base_sizes_match_the_known_counts():
    with torch.device("meta"):
        mlp = create_model("vit_base_patch16_224")
    assert count_parameters(mlp)["total"] == 86_567_656  # ViT-B/16, 1000 classes
    assert create_model("vit_tiny_patch4_28").num_classes == 10


def test_wrong_image_size_is_a_clear_error():
    model = VisionTransformer(**SMALL)
    with pytest.raises(ValueError, match=r"\(B, 3, 16, 16\), got \(1, 3, 20, 20\).*Resize"):
        model(torch.randn(1, 3, 20, 20))
    with pytest.raises(ValueError, match="got \\(1, 1, 16, 16\\)"):
        model(torch.randn(1, 1, 16, 16))
    with pytest.raises(ValueError, match="multiple of patch_size"):
        VisionTransformer(**{**SMALL, "img_size": 18})


@pytest.mark.parametrize("ffn", ["mlp", "chebykan", "kan"])
def test_every_ffn_kind_trains(ffn):
    torch.manual_seed(0)
    model = VisionTransformer(**SMALL, ffn=ffn)
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 5, (4,))
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert torch.isfinite(loss) and all(g is not None and torch.isfinite(g).all() for g in grads)
    expected = {"mlp": nn.Linear, "chebykan": ChebyKANLayer, "kan": KANLinear}[ffn]
    assert isinstance(model.blocks[0].ffn.layer1 if ffn != "mlp" else model.blocks[0].ffn.fc1, expected)


def test_ffn_registry_and_options():
    assert {"mlp", "chebykan", "kan"} <= set(ffn_kinds())
    assert make_ffn("chebykan", 8, 16, degree=5).layer1.degree == 5
    assert make_ffn("kan", 8, 16, grid_size=7).layer1.grid_size == 7
    with pytest.raises(ValueError, match="unknown ffn kind 'nope'"):
        make_ffn("nope", 8, 16)
    with pytest.raises(TypeError, match="does not take the options"):
        make_ffn("mlp", 8, 16, degree=3)
    register_ffn("identity-test", lambda dim, hidden, drop, act_layer: nn.Identity())
    model = VisionTransformer(**SMALL, ffn="identity-test")
    assert model(torch.randn(1, 3, 16, 16)).shape == (1, 5)


def test_distillation_token_and_representation_layer():
    model = VisionTransformer(**SMALL, distilled=True)
    assert model.dist_token is not None and model.pos_embed.shape[1] == 16 + 2
    x = torch.randn(3, 3, 16, 16)
    logits, logits_dist = model.train()(x)
    assert logits.shape == logits_dist.shape == (3, 5)
    model.eval()
    both = model.forward_features(x)
    torch.testing.assert_close(model(x), (model.head(both[0]) + model.head_dist(both[1])) / 2)
    pre = VisionTransformer(**SMALL, representation_size=24)
    assert pre.has_logits and pre.head.in_features == 24 and isinstance(pre.pre_logits.act, nn.Tanh)


def test_stochastic_depth_only_in_training():
    torch.manual_seed(0)
    model = VisionTransformer(**SMALL, drop_path_ratio=0.5)
    assert model.blocks[0].drop_path.__class__.__name__ == "Identity"  # rate 0 for the first block
    assert model.blocks[-1].drop_path.p == 0.5
    x = torch.randn(8, 3, 16, 16)
    model.eval()
    torch.testing.assert_close(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))


def test_sdpa_equals_explicit_attention():
    torch.manual_seed(0)
    sdpa = Attention(32, 4, qkv_bias=True)
    explicit = Attention(32, 4, qkv_bias=True, attn_impl="explicit")
    explicit.load_state_dict(sdpa.state_dict())
    x = torch.randn(2, 9, 32, dtype=torch.float64)
    sdpa, explicit = sdpa.double(), explicit.double()
    torch.testing.assert_close(sdpa(x), explicit(x))
    with pytest.raises(ValueError, match="attn_impl"):
        Attention(32, 4, attn_impl="flash")


def test_init_as_the_seed():
    torch.manual_seed(0)
    model = VisionTransformer(**{**SMALL, "embed_dim": 64, "depth": 4})
    fc = model.blocks[0].ffn.fc1
    assert abs(fc.weight.std().item() - 0.01) < 0.002 and fc.bias.abs().max() == 0
    assert torch.equal(model.norm.weight, torch.ones(64)) and model.norm.eps == 1e-6
    assert abs(model.pos_embed.std().item() - 0.02) < 0.004


def test_parameter_counts():
    model = VisionTransformer(**SMALL, ffn="chebykan")
    model.head.weight.requires_grad_(False)
    counts = count_parameters(model)
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    assert counts["frozen"] == model.head.weight.numel() and counts["trainable"] + counts["frozen"] == counts["total"]
    assert sum(counts["by_module_type"].values()) == counts["total"]
    assert counts["by_module_type"]["ChebyKANLayer"] == sum(
        m.cheby_coeffs.numel() for m in model.modules() if isinstance(m, ChebyKANLayer))


def test_seed_rule_undercounts_kan_models():
    """The seed's table rule sees weight/bias only: it misses tokens, position embedding and all KAN coefficients."""
    for ffn in ("mlp", "chebykan", "kan"):
        model = VisionTransformer(**SMALL, ffn=ffn)
        true, seed = count_parameters(model)["total"], seed_parameter_count(model)
        tokens = model.cls_token.numel() + model.pos_embed.numel()
        kan = sum(p.numel() for n, p in model.named_parameters() if "ffn.layer" in n)
        assert seed["total"] == true - tokens - kan and seed["missed"] == tokens + kan
    with torch.device("meta"):  # the seed's table at tf_flowers' 5 classes, reproduced
        assert seed_parameter_count(create_model("vit_base_patch16_224", num_classes=5))["total"] == 85_650_437
        assert seed_parameter_count(create_model("vit_base_patch16_224", num_classes=5,
                                                 ffn="chebykan"))["total"] == 28_981_253


def test_flops_of_a_linear_and_of_the_base_models():
    m, k, n = 7, 12, 5
    linear = nn.Sequential(nn.Linear(k, n, bias=False))
    assert count_flops(linear, (m, k))["total"] == 2 * m * n * k
    with torch.device("meta"):
        mlp = create_model("vit_base_patch16_224")
        cheby = create_model("vit_base_patch16_224", ffn="chebykan")
    f_mlp, f_cheby = (count_flops(x, (1, 3, 224, 224))["per_image"] / 1e9 for x in (mlp, cheby))
    assert 34.5 < f_mlp < 35.5 and 101.5 < f_cheby < 102.5  # the KAN contractions are counted

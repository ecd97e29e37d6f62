"""Vision Transformer whose feed-forward is pluggable: an MLP or a KAN (chapter 2).

The architecture and options follow the seed's ``VisionTransformer`` (itself the original ViT /
DeiT design): a convolutional patch embedding, a class token (and a DeiT distillation token when
``distilled``), a learned position embedding, pre-norm blocks with stochastic depth, an optional
representation layer (pre-logits: Linear + tanh) and a linear head. Differences:

* attention runs through :func:`torch.nn.functional.scaled_dot_product_attention` (flash or
  memory-efficient kernels on the GPU); ``attn_impl="explicit"`` keeps the seed's
  ``softmax(q k^T * scale) v`` with the (B, heads, N, N) matrix materialised, as a baseline;
* the feed-forward of every block is made by :func:`make_ffn` from a registry: ``"mlp"`` (Linear,
  GELU, Linear), ``"chebykan"`` (two :class:`~labkit.kan.ChebyKANLayer`, option ``degree``) and
  ``"kan"`` (two B-spline :class:`~labkit.kan.KANLinear`, options ``grid_size``, ``spline_order``);
  :func:`register_ffn` adds more kinds;
* a wrong input size raises a ``ValueError`` that says which size the model was built for.

Weights are initialised as in the seed by default (``weight_init="seed"``): Linear weights truncated
normal (std 0.01) with zero bias, the patch convolution Kaiming normal (fan_out), LayerNorm
ones/zeros, the tokens and the position embedding truncated normal (std 0.02). That suits fine-tuning
pretrained weights, not training from scratch: with q and k this small every attention map starts
uniform and its gradient (a product of the two) is tiny, so a from-scratch model sits for hundreds of
steps as a bag of patches (about 25-45% on the MNIST subset after 3 epochs). ``weight_init="xavier"``
(the original JAX ViT's rule for its Dense layers: Xavier-uniform Linear weights, zero bias; the
rest as in the seed) learns MNIST from scratch several times faster; :mod:`labkit.vit.train` uses it.
KAN layers keep their own initialisation either way.
"""
from __future__ import annotations

from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from labkit.kan.layers import ChebyKANLayer, KANLinear

__all__ = [
    "PatchEmbed", "Attention", "Mlp", "KANFeedForward", "Block", "VisionTransformer", "DropPath",
    "ffn_kinds", "make_ffn", "register_ffn", "FACTORIES", "create_model",
    "vit_base_patch16_224", "vit_base_patch16_224_in21k", "vit_base_patch32_224", "vit_base_patch32_224_in21k",
    "vit_large_patch16_224", "vit_large_patch16_224_in21k", "vit_large_patch32_224_in21k",
    "vit_huge_patch14_224_in21k", "vit_tiny_patch4_28", "vit_tiny_patch4_32",
]

ATTN_IMPLS = ("sdpa", "explicit")
WEIGHT_INITS = ("seed", "xavier")


# ------------------------------------------------------------------------------ small pieces
class DropPath(nn.Module):
    """Stochastic depth: zero a whole sample's residual branch with probability ``p`` (training only).

    Kept samples are scaled by 1 / (1 - p), so the expected output equals the input.
    """

    def __init__(self, p: float = 0.0):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop-path probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), device=x.device, dtype=x.dtype).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


class PatchEmbed(nn.Module):
    """(B, C, H, W) -> (B, num_patches, embed_dim) by a stride-``patch_size`` convolution."""

    def __init__(self, img_size=224, patch_size=16, in_c: int = 3, embed_dim: int = 768, norm_layer=None):
        super().__init__()
        self.img_size, self.patch_size = _pair(img_size), _pair(patch_size)
        if any(s % p for s, p in zip(self.img_size, self.patch_size)):
            raise ValueError(f"img_size {self.img_size} must be a multiple of patch_size {self.patch_size}")
        self.in_c = in_c
        self.grid_size = (self.img_size[0] // self.patch_size[0], self.img_size[1] // self.patch_size[1])
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_c, embed_dim, kernel_size=self.patch_size, stride=self.patch_size)
        self.norm = norm_layer(embed_dim) if norm_layer else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or tuple(x.shape[1:]) != (self.in_c, *self.img_size):
            raise ValueError(
                f"this model takes images of shape (B, {self.in_c}, {self.img_size[0]}, {self.img_size[1]}), "
                f"got {tuple(x.shape)}; resize the images (e.g. torchvision.transforms.Resize"
                f"({self.img_size[0]})) or build the model with img_size=/in_c= matching them")
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))


class Attention(nn.Module):
    """Multi-head self-attention, (B, N, dim) -> (B, N, dim).

    ``attn_impl="sdpa"`` calls ``F.scaled_dot_product_attention``; ``"explicit"`` is the seed's
    formulation (the N x N score matrix built, softmaxed and multiplied out in PyTorch). Both
    compute the same function and have the same parameters.
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, qk_scale: float | None = None,
                 attn_drop_ratio: float = 0.0, proj_drop_ratio: float = 0.0, attn_impl: str = "sdpa"):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        if attn_impl not in ATTN_IMPLS:
            raise ValueError(f"attn_impl must be one of {ATTN_IMPLS}, got {attn_impl!r}")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = qk_scale or self.head_dim ** -0.5
        self.attn_impl = attn_impl
        self.attn_drop_ratio = attn_drop_ratio
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop_ratio)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        # (B, N, 3C) -> (3, B, heads, N, head_dim)
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if self.attn_impl == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop_ratio if self.training else 0.0,
                                                 scale=self.scale)
        else:
            weights = self.attn_drop((q @ k.transpose(-2, -1) * self.scale).softmax(dim=-1))
            out = weights @ v
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, c)))


class Mlp(nn.Module):
    """The transformer's feed-forward: Linear -> activation -> dropout -> Linear -> dropout."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int | None = None,
                 act_layer=nn.GELU, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, out_features or in_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class KANFeedForward(nn.Module):
    """Two KAN layers dim -> hidden -> dim in place of the MLP (the learnable functions are the nonlinearity).

    The input checks of the layers are off (``check_inputs = False``): the NaN test costs a GPU
    sync per layer per step.
    """

    def __init__(self, layer1: nn.Module, layer2: nn.Module, drop: float = 0.0):
        super().__init__()
        self.layer1, self.layer2 = layer1, layer2
        for layer in (layer1, layer2):
            if hasattr(layer, "check_inputs"):
                layer.check_inputs = False
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.layer2(self.drop(self.layer1(x))))


# ------------------------------------------------------------------------------ the ffn registry
FfnBuilder = Callable[..., nn.Module]
_FFN_REGISTRY: dict[str, FfnBuilder] = {}


def register_ffn(kind: str, builder: FfnBuilder | None = None):
    """Register ``builder(dim, hidden, *, drop, act_layer, **ffn_kwargs) -> nn.Module`` under ``kind``.

    Usable as a decorator: ``@register_ffn("fourierkan")``. The module maps (..., dim) -> (..., dim).
    """
    def add(fn: FfnBuilder) -> FfnBuilder:
        _FFN_REGISTRY[kind] = fn
        return fn

    return add if builder is None else add(builder)


def ffn_kinds() -> tuple[str, ...]:
    """The registered feed-forward kinds."""
    return tuple(_FFN_REGISTRY)


def make_ffn(kind: str, dim: int, hidden: int, *, drop: float = 0.0, act_layer=nn.GELU, **ffn_kwargs) -> nn.Module:
    """The feed-forward module of kind ``kind`` ("mlp", "chebykan", "kan", or a registered one)."""
    if kind not in _FFN_REGISTRY:
        raise ValueError(f"unknown ffn kind {kind!r}; known: {sorted(_FFN_REGISTRY)} (add one with register_ffn)")
    try:
        return _FFN_REGISTRY[kind](dim, hidden, drop=drop, act_layer=act_layer, **ffn_kwargs)
    except TypeError as error:
        raise TypeError(f"ffn {kind!r} does not take the options {sorted(ffn_kwargs)}: {error}") from error


@register_ffn("mlp")
def _mlp(dim: int, hidden: int, *, drop: float = 0.0, act_layer=nn.GELU) -> nn.Module:
    return Mlp(dim, hidden, act_layer=act_layer, drop=drop)


@register_ffn("chebykan")
def _chebykan(dim: int, hidden: int, *, drop: float = 0.0, act_layer=None, degree: int = 3) -> nn.Module:
    return KANFeedForward(ChebyKANLayer(dim, hidden, degree), ChebyKANLayer(hidden, dim, degree), drop)


@register_ffn("kan")
def _bspline_kan(dim: int, hidden: int, *, drop: float = 0.0, act_layer=None, grid_size: int = 5,
                 spline_order: int = 3, **layer_kwargs) -> nn.Module:
    make = partial(KANLinear, grid_size=grid_size, spline_order=spline_order, **layer_kwargs)
    return KANFeedForward(make(dim, hidden), make(hidden, dim), drop)


# ------------------------------------------------------------------------------ the model
class Block(nn.Module):
    """Pre-norm transformer block: x + DropPath(attn(norm1 x)), then x + DropPath(ffn(norm2 x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = False,
                 qk_scale: float | None = None, drop_ratio: float = 0.0, attn_drop_ratio: float = 0.0,
                 drop_path_ratio: float = 0.0, act_layer=nn.GELU, norm_layer=nn.LayerNorm,
                 ffn: str = "mlp", ffn_kwargs: dict | None = None, attn_impl: str = "sdpa"):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads, qkv_bias, qk_scale, attn_drop_ratio, drop_ratio, attn_impl)
        self.drop_path = DropPath(drop_path_ratio) if drop_path_ratio > 0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.ffn = make_ffn(ffn, dim, int(dim * mlp_ratio), drop=drop_ratio, act_layer=act_layer,
                            **(ffn_kwargs or {}))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.ffn(self.norm2(x)))


def init_vit_weights(module: nn.Module, weight_init: str = "seed") -> None:
    """Initialise one module (applied to every module by ``model.apply``): the seed's rule, or with
    ``weight_init="xavier"`` Xavier-uniform Linear weights (see the module docstring)."""
    if weight_init not in WEIGHT_INITS:
        raise ValueError(f"weight_init must be one of {WEIGHT_INITS}, got {weight_init!r}")
    if isinstance(module, nn.Linear):
        if weight_init == "xavier":
            nn.init.xavier_uniform_(module.weight)
        else:
            nn.init.trunc_normal_(module.weight, std=0.01)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out")
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class VisionTransformer(nn.Module):
    """ViT / DeiT classifier with the seed's options plus ``ffn``, ``ffn_kwargs`` and ``attn_impl``.

    Args (the seed's names):
        img_size, patch_size, in_c: input images (in_c, img_size, img_size), cut into square patches.
        num_classes: head outputs (0: no head, ``forward`` returns features).
        embed_dim, depth, num_heads, mlp_ratio: width, blocks, heads, ffn hidden = mlp_ratio * embed_dim.
        qkv_bias, qk_scale: bias of the qkv projection; attention scale (default head_dim ** -0.5).
        representation_size: if set (and not ``distilled``), a Linear + tanh "pre-logits" layer of
            this width sits before the head (the in21k configurations).
        distilled: add a distillation token and a second head (DeiT). In training ``forward``
            returns (class logits, distillation logits); in eval their mean.
        drop_ratio, attn_drop_ratio, drop_path_ratio: dropout after the embedding/projections,
            attention dropout, stochastic depth (rising linearly from 0 to this over the blocks).
        ffn, ffn_kwargs: the feed-forward kind and its options (see :func:`make_ffn`).
        attn_impl: "sdpa" or "explicit" (the seed's formulation).
        weight_init: "seed" (Linear weights std 0.01, as in the seed) or "xavier" (for training from
            scratch; see the module docstring).
    """

    def __init__(self, img_size=224, patch_size=16, in_c: int = 3, num_classes: int = 1000, embed_dim: int = 768,
                 depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 qk_scale: float | None = None, representation_size: int | None = None, distilled: bool = False,
                 drop_ratio: float = 0.0, attn_drop_ratio: float = 0.0, drop_path_ratio: float = 0.0,
                 embed_layer=PatchEmbed, norm_layer=None, act_layer=None, ffn: str = "mlp",
                 ffn_kwargs: dict | None = None, attn_impl: str = "sdpa", weight_init: str = "seed"):
        super().__init__()
        if weight_init not in WEIGHT_INITS:
            raise ValueError(f"weight_init must be one of {WEIGHT_INITS}, got {weight_init!r}")
        norm_layer = norm_layer or partial(nn.LayerNorm, eps=1e-6)
        act_layer = act_layer or nn.GELU
        self.num_classes, self.embed_dim, self.num_features = num_classes, embed_dim, embed_dim
        self.mlp_ratio = mlp_ratio  # the MLP hidden width is int(embed_dim * mlp_ratio)
        self.num_tokens = 2 if distilled else 1
        self.ffn_kind, self.ffn_kwargs = ffn, dict(ffn_kwargs or {})

        self.patch_embed = embed_layer(img_size=img_size, patch_size=patch_size, in_c=in_c, embed_dim=embed_dim)
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if distilled else None
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + self.num_tokens, embed_dim))
        self.pos_drop = nn.Dropout(drop_ratio)

        rates = [drop_path_ratio * i / (depth - 1) if depth > 1 else 0.0 for i in range(depth)]  # grows with depth
        self.blocks = nn.Sequential(*[
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, qk_scale, drop_ratio, attn_drop_ratio, rates[i],
                  act_layer, norm_layer, ffn, ffn_kwargs, attn_impl)
            for i in range(depth)])
        self.norm = norm_layer(embed_dim)

        if representation_size and not distilled:
            self.has_logits, self.num_features = True, representation_size
            self.pre_logits = nn.Sequential()
            self.pre_logits.add_module("fc", nn.Linear(embed_dim, representation_size))
            self.pre_logits.add_module("act", nn.Tanh())
        else:
            self.has_logits, self.pre_logits = False, nn.Identity()
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.head_dist = None
        if distilled:
            self.head_dist = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()

        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        if self.dist_token is not None:
            nn.init.trunc_normal_(self.dist_token, std=0.02)
        self.apply(partial(init_vit_weights, weight_init=weight_init))

    def forward_features(self, x: torch.Tensor):
        """The class token's features (after pre-logits), or (class, distillation) features when distilled."""
        x = self.patch_embed(x)
        tokens = [self.cls_token.expand(x.shape[0], -1, -1)]
        if self.dist_token is not None:
            tokens.append(self.dist_token.expand(x.shape[0], -1, -1))
        x = self.pos_drop(torch.cat(tokens + [x], dim=1) + self.pos_embed)
        x = self.norm(self.blocks(x))
        if self.dist_token is None:
            return self.pre_logits(x[:, 0])
        return x[:, 0], x[:, 1]

    def forward(self, x: torch.Tensor):
        features = self.forward_features(x)
        if self.head_dist is None:
            return self.head(features)
        logits, logits_dist = self.head(features[0]), self.head_dist(features[1])
        if self.training:
            return logits, logits_dist
        return (logits + logits_dist) / 2


# ------------------------------------------------------------------------------ factories
def _factory(name: str, doc: str, in21k: bool = False, classes: int | None = None, **arch):
    default_classes = classes or (21843 if in21k else 1000)

    def build(num_classes: int = default_classes, has_logits: bool = True, **kwargs) -> VisionTransformer:
        options = dict(arch)
        if in21k:
            options["representation_size"] = arch["embed_dim"] if has_logits else None
        options.update(kwargs)
        return VisionTransformer(num_classes=num_classes, **options)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = (f"{doc}. ``num_classes`` defaults to {default_classes}"
                     + ("; ``has_logits`` adds the representation layer" if in21k else "")
                     + "; other keywords (ffn, ffn_kwargs, drop_path_ratio, ...) go to VisionTransformer.")
    return build


_B = dict(embed_dim=768, depth=12, num_heads=12)
_L = dict(embed_dim=1024, depth=24, num_heads=16)
_H = dict(embed_dim=1280, depth=32, num_heads=16)
vit_base_patch16_224 = _factory("vit_base_patch16_224", "ViT-B/16 at 224x224", img_size=224, patch_size=16, **_B)
vit_base_patch16_224_in21k = _factory("vit_base_patch16_224_in21k", "ViT-B/16, ImageNet-21k head", True,
                                      img_size=224, patch_size=16, **_B)
vit_base_patch32_224 = _factory("vit_base_patch32_224", "ViT-B/32 at 224x224", img_size=224, patch_size=32, **_B)
vit_base_patch32_224_in21k = _factory("vit_base_patch32_224_in21k", "ViT-B/32, ImageNet-21k head", True,
                                      img_size=224, patch_size=32, **_B)
vit_large_patch16_224 = _factory("vit_large_patch16_224", "ViT-L/16 at 224x224", img_size=224, patch_size=16, **_L)
vit_large_patch16_224_in21k = _factory("vit_large_patch16_224_in21k", "ViT-L/16, ImageNet-21k head", True,
                                       img_size=224, patch_size=16, **_L)
vit_large_patch32_224_in21k = _factory("vit_large_patch32_224_in21k", "ViT-L/32, ImageNet-21k head", True,
                                       img_size=224, patch_size=32, **_L)
vit_huge_patch14_224_in21k = _factory("vit_huge_patch14_224_in21k", "ViT-H/14, ImageNet-21k head", True,
                                      img_size=224, patch_size=14, **_H)
# Small configurations: 7 x 7 patches of 4 pixels for MNIST (1 channel), 8 x 8 for 32 x 32 RGB.
_T = dict(embed_dim=192, depth=6, num_heads=3, mlp_ratio=4.0)
vit_tiny_patch4_28 = _factory("vit_tiny_patch4_28", "Tiny ViT for 28x28 grey images (MNIST), 10 classes",
                              classes=10, img_size=28, patch_size=4, in_c=1, **_T)
vit_tiny_patch4_32 = _factory("vit_tiny_patch4_32", "Tiny ViT for 32x32 RGB images (CIFAR-like), 10 classes",
                              classes=10, img_size=32, patch_size=4, in_c=3, **_T)

FACTORIES: dict[str, Callable[..., VisionTransformer]] = {
    f.__name__: f for f in (
        vit_base_patch16_224, vit_base_patch16_224_in21k, vit_base_patch32_224, vit_base_patch32_224_in21k,
        vit_large_patch16_224, vit_large_patch16_224_in21k, vit_large_patch32_224_in21k,
        vit_huge_patch14_224_in21k, vit_tiny_patch4_28, vit_tiny_patch4_32)
}


def create_model(name: str, **kwargs) -> VisionTransformer:
    """``FACTORIES[name](**kwargs)`` with a helpful error for an unknown name."""
    if name not in FACTORIES:
        raise ValueError(f"unknown model {name!r}; known: {sorted(FACTORIES)}")
    return FACTORIES[name](**kwargs)

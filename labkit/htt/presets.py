"""Phase-1 presets: named, immutable configurations of a small AR-SSM + TT-embedding language model.

The six names, the aliases and four values per preset come from the seed (its table):

| preset | alias | target VRAM | AR-SSM max rank | HTT rank | LNS | gradient checkpointing |
|---|---|---|---|---|---|---|
| ``8gb`` | ``memory_oriented`` | 8 GB | 16 | 8 | no | yes |
| ``10gb`` | ``balanced`` | 10 GB | 32 | 16 | no | yes |
| ``24gb`` | ``speed_oriented`` | 24 GB | 64 | 32 | no | no |
| ``inference`` | | 8 GB | 32 | 16 | yes (see below) | no |
| ``max_quality`` | ``quality`` | 40 GB | 128 | 64 | no | no |
| ``max_efficiency`` | ``efficiency`` | 6 GB | 16 | 8 | no | yes |

The seed's presets set no model size. labkit chooses one per preset (``d_model``, ``n_layers``,
``seq_len``, ``batch_size``; GPT-2's vocabulary of 50,257 tokens, the size the seed benchmarked)
so that one training step (inference preset: one forward pass) fits the budget, and
:func:`measure_preset_memory` checks that on a GPU. The sizes were chosen from an estimate
(parameters, gradients and AdamW state at 16 bytes per parameter, bf16 activations, the logits)
and are confirmed or corrected by the measurement on an H100 in the chapter.

What labkit leaves out of the seed's ``Phase1Config``: ``ar_ssm_min_rank`` (the gates decide how
many channels stay on), the gate MLP's width (the gates here are per-channel logits, see
:mod:`labkit.htt.arssm`), the fused-scan switch (:func:`labkit.htt.scan.linear_scan` picks its
kernel itself), ``htt_phase_encoding`` (chapter 5a shows the ``cos`` phase is a
reparametrisation; the model uses plain TT cores), the LNS block sizes, the Schatten bounds and
the PPL/speed "targets" (wishes, not settings).

**LNS.** The seed's ``inference`` preset switches on its log-number-system matmul kernel, which
does not compile (see the research notes), and on a GPU a log-domain matmul with an ``exp`` and a
``log1p`` per term would be slower than a tensor-core GEMM anyway. labkit's model has no LNS
path: ``lns_enabled`` is kept so the table matches the seed, :func:`build_model` ignores it, and
the comparison table says so. The inference preset runs ordinary bf16 matmuls.

Presets are frozen dataclasses in a read-only registry: ``get_preset`` can hand out the shared
instance because nobody can change it (the seed's were mutable singletons, and its recovery code
changed them in place for every later caller). Make a variant with ``preset.replace(...)``.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from types import MappingProxyType

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from labkit.htt.arssm import GATE_MODES, AdaptiveRankSemiseparableLayer

PURPOSES = ("train", "inference")


@dataclass(frozen=True)
class Phase1Config:
    """One preset. Fields marked (seed) come from the seed's presets; the rest are labkit's choices."""

    name: str
    description: str
    target_vram_gb: float             # (seed) the memory budget, GiB of GPU memory
    ar_ssm_max_rank: int              # (seed) state channels of every AR-SSM layer
    htt_rank: int                     # (seed) TT rank of the input embedding
    lns_enabled: bool                 # (seed) recorded only: labkit's model has no LNS path
    use_gradient_checkpointing: bool  # (seed) recompute each block (and the loss in chunks) in backward
    d_model: int
    n_layers: int
    seq_len: int
    batch_size: int
    vocab_size: int = 50257           # GPT-2's vocabulary, as in the seed's benchmarks
    purpose: str = "train"            # "train": a training step must fit; "inference": a forward pass
    gate_mode: str = "soft"           # AR-SSM gate mode while training
    amp: bool = True                  # bf16 autocast on CUDA
    loss_chunk_tokens: int = 1024     # with checkpointing, logits are built this many tokens at a time
    stability_threshold: float = 100.0  # for Phase1ErrorRecovery: a gradient norm this many times its
                                        # recent average counts as unstable (the seed's field, labkit's meaning)
    grad_clip: float | None = None    # max gradient norm (None: no clipping until recovery turns it on)

    def __post_init__(self):
        for name in ("ar_ssm_max_rank", "htt_rank", "d_model", "n_layers", "seq_len", "batch_size", "vocab_size",
                     "loss_chunk_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{self.name}: {name} must be a positive int, got {value!r}")
        if not self.target_vram_gb > 0:
            raise ValueError(f"{self.name}: target_vram_gb must be positive, got {self.target_vram_gb!r}")
        if self.purpose not in PURPOSES:
            raise ValueError(f"{self.name}: purpose must be one of {PURPOSES}, got {self.purpose!r}")
        if self.gate_mode not in GATE_MODES:
            raise ValueError(f"{self.name}: gate_mode must be one of {GATE_MODES}, got {self.gate_mode!r}")
        if not self.stability_threshold > 0:
            raise ValueError(f"{self.name}: stability_threshold must be positive, got {self.stability_threshold!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"{self.name}: grad_clip must be None or positive, got {self.grad_clip!r}")

    def replace(self, **changes) -> "Phase1Config":
        """A new (validated, frozen) config with some fields changed, e.g. ``preset.replace(d_model=64)``."""
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _presets() -> dict[str, Phase1Config]:
    seed_values = {  # name: (VRAM, AR-SSM rank, HTT rank, LNS, checkpointing, description)
        "8gb": (8.0, 16, 8, False, True, "8 GB cards (RTX 3080 Mobile, 3070), strong compression"),
        "10gb": (10.0, 32, 16, False, True, "10 GB cards (RTX 3080), balanced"),
        "24gb": (24.0, 64, 32, False, False, "24 GB cards (RTX 4090, 3090), speed over memory"),
        "inference": (8.0, 32, 16, True, False, "inference only, 8 GB (the seed's LNS kernel is not used)"),
        "max_quality": (40.0, 128, 64, False, False, "least compression, 40 GB cards (A100 40GB)"),
        "max_efficiency": (6.0, 16, 8, False, True, "maximum compression, 6 GB cards"),
    }
    sizes = {  # labkit's model sizes: (d_model, n_layers, seq_len, batch_size)
        "8gb": (1024, 12, 2048, 8),
        "10gb": (1280, 16, 2048, 8),
        "24gb": (1280, 24, 2048, 4),
        "inference": (1280, 16, 2048, 16),
        "max_quality": (2048, 24, 2048, 4),
        "max_efficiency": (768, 12, 2048, 8),
    }
    out = {}
    for name in seed_values:
        vram, ar_rank, htt_rank, lns, ckpt, description = seed_values[name]
        d, n, seq, batch = sizes[name]
        out[name] = Phase1Config(name=name, description=description, target_vram_gb=vram, ar_ssm_max_rank=ar_rank,
                                 htt_rank=htt_rank, lns_enabled=lns, use_gradient_checkpointing=ckpt, d_model=d,
                                 n_layers=n, seq_len=seq, batch_size=batch,
                                 purpose="inference" if name == "inference" else "train")
    return out


PRESETS = MappingProxyType(_presets())
ALIASES = MappingProxyType({"memory_oriented": "8gb", "balanced": "10gb", "speed_oriented": "24gb",
                            "quality": "max_quality", "efficiency": "max_efficiency"})


def _normalise(name: str) -> str:
    return name.strip().lower().replace("-", "_").replace(" ", "_")


def get_preset(name: str) -> Phase1Config:
    """The preset called ``name`` or one of its aliases (case-insensitive, ``-`` or ``_``).

    The returned config is immutable (assigning a field raises); ``.replace(...)`` makes a variant.
    Unknown names raise ``ValueError`` listing the valid names and aliases.
    """
    if not isinstance(name, str):
        raise TypeError(f"preset name must be a string, got {type(name).__name__}")
    key = _normalise(name)
    key = ALIASES.get(key, key)
    if key not in PRESETS:
        aliases = ", ".join(f"{a} -> {t}" for a, t in ALIASES.items())
        raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}; aliases: {aliases}")
    return PRESETS[key]


def list_presets() -> dict[str, str]:
    """``{name: description}`` for every preset, in the seed's order."""
    return {name: config.description for name, config in PRESETS.items()}


def preset_table(measured: dict[str, float] | None = None) -> list[dict]:
    """One row per preset (for a DataFrame): the seed's values, labkit's sizes, the parameter count,
    and, if given, the measured peak memory in GiB (``measured[name]``)."""
    rows = []
    for name, c in PRESETS.items():
        aliases = [a for a, t in ALIASES.items() if t == name]
        row = {"preset": name, "aliases": ", ".join(aliases), "budget_gib": c.target_vram_gb,
               "ar_ssm_rank": c.ar_ssm_max_rank, "htt_rank": c.htt_rank,
               "lns": "seed: on (not used)" if c.lns_enabled else "off",
               "checkpointing": c.use_gradient_checkpointing, "purpose": c.purpose, "d_model": c.d_model,
               "n_layers": c.n_layers, "batch_x_seq": f"{c.batch_size} x {c.seq_len}",
               "params_m": count_parameters(c) / 1e6}
        if measured is not None:
            row["measured_gib"] = measured.get(name)
        rows.append(row)
    return rows


def print_preset_comparison(measured: dict[str, float] | None = None, file=None) -> None:
    """Print :func:`preset_table` as a fixed-width table (to ``file``, default stdout)."""
    rows = preset_table(measured)
    columns = [("preset", "preset", "{}"), ("aliases", "aliases", "{}"), ("budget_gib", "budget GiB", "{:.0f}"),
               ("ar_ssm_rank", "AR-SSM r", "{}"), ("htt_rank", "HTT r", "{}"),
               ("checkpointing", "ckpt", "{}"), ("lns", "LNS", "{}"), ("purpose", "purpose", "{}"),
               ("d_model", "d_model", "{}"), ("n_layers", "layers", "{}"), ("batch_x_seq", "batch x seq", "{}"),
               ("params_m", "params M", "{:.1f}")]
    if measured is not None:
        columns.append(("measured_gib", "peak GiB", "{:.2f}"))
    cells = [[("-" if row[key] is None else fmt.format(row[key])) for key, _, fmt in columns] for row in rows]
    widths = [max(len(title), *(len(r[i]) for r in cells)) for i, (_, title, _) in enumerate(columns)]
    out = file or sys.stdout
    print("  ".join(title.ljust(w) for (_, title, _), w in zip(columns, widths)), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for r in cells:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)), file=out)


# ================================================================================== the model
class Phase1Block(nn.Module):
    """Pre-LayerNorm residual block: AR-SSM sequence mixer, then a 4x GELU MLP."""

    def __init__(self, d_model: int, max_rank: int, gate_mode: str = "soft"):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.mixer = AdaptiveRankSemiseparableLayer(d_model, max_rank, gate_mode=gate_mode)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.mixer(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Phase1LM(nn.Module):
    """TT input embedding, ``n_layers`` AR-SSM blocks, final LayerNorm, dense output head.

    No position embedding: the AR-SSM's recurrence and causal convolution know the order. The
    head is a dense ``Linear`` (it cannot be tied to a TT embedding, whose table is never built);
    at GPT-2's vocabulary it holds most of the parameters of the small presets.
    ``forward(ids)`` returns logits; :meth:`loss` the mean next-token cross-entropy, computed in
    chunks under checkpointing when the config asks for gradient checkpointing, so that the
    ``(tokens, vocab)`` logits never exist at once.
    """

    def __init__(self, config: Phase1Config, embedding_backend: str = "auto"):
        super().__init__()
        from labkit.htt.tt import HolographicTTEmbedding

        self.config = config
        self.embedding = HolographicTTEmbedding(config.vocab_size, config.d_model, config.htt_rank,
                                                backend=embedding_backend, check_ids=False)
        self.blocks = nn.ModuleList(Phase1Block(config.d_model, config.ar_ssm_max_rank, config.gate_mode)
                                    for _ in range(config.n_layers))
        self.norm = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        for block in self.blocks:
            for layer in block.mlp:
                if isinstance(layer, nn.Linear):
                    nn.init.normal_(layer.weight, std=0.02)
                    nn.init.zeros_(layer.bias)
        nn.init.normal_(self.head.weight, std=0.02)

    def _checkpointing(self) -> bool:
        return self.config.use_gradient_checkpointing and self.training and torch.is_grad_enabled()

    def hidden(self, ids: torch.Tensor) -> torch.Tensor:
        """The final normalised hidden states (B, L, d)."""
        if ids.dim() != 2:
            raise ValueError(f"ids must be (batch, time), got shape {tuple(ids.shape)}")
        x = self.embedding(ids)
        for block in self.blocks:
            x = checkpoint(block, x, use_reentrant=False) if self._checkpointing() else block(x)
        return self.norm(x)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.hidden(ids))

    def _chunk_loss(self, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.head(h).float(), targets, reduction="sum")

    def loss(self, ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of predicting ``targets`` (B, L) from ``ids`` (B, L)."""
        h = self.hidden(ids).flatten(0, 1)
        targets = targets.flatten()
        if not self._checkpointing():
            return F.cross_entropy(self.head(h).float(), targets)
        chunk = self.config.loss_chunk_tokens
        total = sum(checkpoint(self._chunk_loss, hs, ts, use_reentrant=False)
                    for hs, ts in zip(h.split(chunk), targets.split(chunk)))
        return total / targets.numel()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def build_model(config: Phase1Config | str, embedding_backend: str = "auto") -> Phase1LM:
    """The Phase-1 language model of a preset (a :class:`Phase1Config` or a preset name), on the CPU.

    ``lns_enabled`` is ignored (labkit has no LNS path; see the module docstring).
    """
    if isinstance(config, str):
        config = get_preset(config)
    return Phase1LM(config, embedding_backend=embedding_backend)


def count_parameters(config: Phase1Config) -> int:
    """The parameter count of :func:`build_model`'s model, without building it."""
    from labkit.htt.tt import tt_shapes

    d, r = config.d_model, config.ar_ssm_max_rank
    embedding = sum(a * b * c * e for a, b, c, e in tt_shapes(config.vocab_size, d, config.htt_rank, 2))
    mixer = 4 * d * r + r + r + 3 * d + d       # U, V, A, W_o; c; gate logits; conv weight and bias
    mlp = 8 * d * d + 5 * d
    block = mixer + mlp + 4 * d                 # two LayerNorms
    return embedding + config.n_layers * block + 2 * d + config.vocab_size * d


# ================================================================================== memory
def measure_preset_memory(config: Phase1Config | str, device: str | torch.device = "cuda", *,
                          embedding_backend: str = "auto", context_gib: float = 0.5, seed: int = 0) -> dict:
    """Run the preset's workload once to warm up, then once more measured, and report its memory.

    Workload: for ``purpose="train"`` one full training step at the preset's batch and sequence
    length (forward, loss, backward, AdamW step; bf16 autocast if ``amp``); the warm-up step
    creates AdamW's state, so the measured step holds parameters, gradients, both moments and
    the activations. For ``purpose="inference"`` one forward pass in eval mode under
    ``torch.inference_mode``.

    Returns a dict: ``name``, ``purpose``, ``params``, ``peak_allocated_gib`` and
    ``peak_reserved_gib`` (CUDA: the allocator's peaks during the measured step, above what was
    allocated before the model was built; ``None`` on CPU), ``budget_gib``, ``fits`` (the
    reserved peak plus ``context_gib`` for the CUDA context, which the allocator does not see,
    is within the budget; ``None`` on CPU) ``seconds`` (the measured step's wall time), ``build_seconds`` and ``warmup_seconds``
    (building the model and the first step, autotuning included).
    On CPU it runs the same code at whatever size ``config`` says: use a reduced config.
    """
    if isinstance(config, str):
        config = get_preset(config)
    device = torch.device(device)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        base_allocated = torch.cuda.memory_allocated(device)
        base_reserved = torch.cuda.memory_reserved(device)
    gen = torch.Generator().manual_seed(seed)  # CPU generator: the same ids on every device
    build_started = time.perf_counter()
    with torch.random.fork_rng(devices=[device] if cuda else []):
        torch.manual_seed(seed)
        model = build_model(config, embedding_backend).to(device)
    ids = torch.randint(0, config.vocab_size, (config.batch_size, config.seq_len + 1), generator=gen).to(device)
    x, y = ids[:, :-1], ids[:, 1:]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.amp and cuda)
    if config.purpose == "inference":
        model.eval()
        optimizer = None

        def run():
            with torch.inference_mode(), autocast:
                model(x)
    else:
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=cuda)

        def run():
            with autocast:
                loss = model.loss(x, y)
            optimizer.zero_grad(set_to_none=False)  # keep the gradients allocated, as in a training loop
            loss.backward()
            optimizer.step()

    warmup_started = time.perf_counter()
    run()  # warm-up: AdamW's state, and the Triton kernels' autotuning for these shapes
    peak_allocated = peak_reserved = None
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    run()
    if cuda:
        torch.cuda.synchronize(device)
        peak_allocated = (torch.cuda.max_memory_allocated(device) - base_allocated) / 2**30
        peak_reserved = (torch.cuda.max_memory_reserved(device) - base_reserved) / 2**30
    seconds = time.perf_counter() - started
    params = model.num_parameters()
    del model, optimizer, x, y, ids
    if cuda:
        torch.cuda.empty_cache()
    return {"name": config.name, "purpose": config.purpose, "params": params,
            "tokens": config.batch_size * config.seq_len, "peak_allocated_gib": peak_allocated,
            "peak_reserved_gib": peak_reserved, "budget_gib": config.target_vram_gb,
            "fits": None if peak_reserved is None else peak_reserved + context_gib <= config.target_vram_gb,
            "seconds": seconds, "build_seconds": warmup_started - build_started,
            "warmup_seconds": started - warmup_started}


__all__ = ["ALIASES", "PRESETS", "Phase1Block", "Phase1Config", "Phase1LM", "build_model", "count_parameters",
           "get_preset", "list_presets", "measure_preset_memory", "preset_table", "print_preset_comparison"]

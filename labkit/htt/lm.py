"""A small language model to measure what a TT input embedding costs in quality.

Everything runs offline, on CPU in seconds at test size:

* the corpus is the Python standard library's own source code: real text, a few MB, present on
  every machine that runs Python (:func:`load_corpus`);
* the tokenizer is a byte-level BPE trained on it here with Hugging Face ``tokenizers``
  (:func:`train_tokenizer`, :func:`encode`);
* the model is a small decoder-only transformer whose *input* embedding is pluggable
  (:class:`TinyLM`), trained with AdamW on random windows (:func:`train_lm`) and scored by
  validation perplexity on fixed windows (:func:`evaluate`).

The output head is a dense ``Linear`` in every variant, so differences in perplexity come from the
input embedding alone.
"""
from __future__ import annotations

import hashlib
import math
import os
import platform
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from labkit.data import DatasetUnavailableError, atomic_write

__all__ = ["Corpus", "load_corpus", "train_tokenizer", "encode", "split_tokens", "TinyLM", "LMConfig",
           "train_lm", "evaluate", "make_embedding"]

# Folders of the standard library that are not "the library": installed packages, and test suites
# full of generated data and deliberately odd code.
SKIP_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3", "__pycache__"})


# ============================================================================================ corpus
@dataclass(frozen=True)
class Corpus:
    text: str
    files: int    # how many source files went in (the last one possibly cut short)
    bytes: int    # len(text.encode("utf-8"))
    sha256: str   # of text as UTF-8; two machines with the same sha trained on the same corpus
    source: str   # where the text came from, in words

    def __str__(self) -> str:
        return f"{self.source}: {self.files} files, {self.bytes / 1e6:.2f} MB, sha256 {self.sha256[:12]}"


def _source_files(root: Path) -> list[Path]:
    """The ``.py`` files under ``root`` in sorted (relative, POSIX) path order, skipped folders pruned."""
    found = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS]  # prune: never walk into site-packages
        found += [Path(folder, n) for n in names if n.endswith(".py")]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def load_corpus(max_bytes: int, root: str | os.PathLike | None = None) -> Corpus:
    """The ``.py`` sources of the standard library (or of ``root``), at most ``max_bytes`` of UTF-8.

    Files come in sorted path order, each preceded by a ``# file: <path>`` line, so the result is
    the same on every machine with the same Python version. Files that are not valid UTF-8 are
    skipped. The text is cut at the last line break before ``max_bytes``; if less than a tenth of
    ``max_bytes`` is found, :class:`~labkit.data.DatasetUnavailableError` is raised.
    """
    if max_bytes <= 0:
        raise ValueError(f"max_bytes must be positive, got {max_bytes}")
    root = Path(root if root is not None else sysconfig.get_paths()["stdlib"])
    parts, size, files = [], 0, 0
    for path in _source_files(root) if root.is_dir() else []:
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        # The header is a Python comment, so the corpus stays valid-looking Python, and it tells
        # the model where one file ends and the next begins.
        part = f"# file: {path.relative_to(root).as_posix()}\n{text.rstrip()}\n\n"
        parts.append(part)
        files += 1
        size += len(part.encode("utf-8"))
        if size >= max_bytes:
            break
    data = "".join(parts).encode("utf-8")
    if len(data) > max_bytes:
        data = data[: data.rfind(b"\n", 0, max_bytes) + 1]  # whole lines, never half a character
    if len(data) < max_bytes // 10:
        raise DatasetUnavailableError(
            f"found only {len(data):,} bytes of UTF-8 Python source under {root}, but asked for "
            f"{max_bytes:,} (at least a tenth is needed); ask for less or point root= elsewhere")
    text = data.decode("utf-8")
    source = f"Python {platform.python_version()} standard library sources" if root == Path(
        sysconfig.get_paths()["stdlib"]) else f"Python sources under {root}"
    return Corpus(text, files, len(data), hashlib.sha256(data).hexdigest(), source)


# ========================================================================================= tokenizer
def train_tokenizer(text: str, vocab_size: int, cache_dir: str | os.PathLike | None = None):
    """A byte-level BPE tokenizer with ``vocab_size`` tokens, trained on ``text``.

    Byte level means every string can be encoded (no unknown token) and decoding gives back the
    exact text. Training is deterministic; with ``cache_dir`` the result is saved as JSON named
    after the text's sha256 and the vocabulary size, and loaded from there next time.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < 257:
        raise ValueError(f"vocab_size must be at least 257 (256 bytes + one merge), got {vocab_size}")
    cache = None
    if cache_dir is not None:
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
        cache = Path(cache_dir) / f"bpe-{digest}-{vocab_size}.json"
        if cache.exists():
            return Tokenizer.from_file(str(cache))

    tokenizer = Tokenizer(models.BPE())
    # No prefix space: a space is added to the first word otherwise, and decode(encode(x)) != x.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    # All 256 bytes start in the vocabulary, whatever the text holds, so nothing is ever unknown.
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=[],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(_line_chunks(text, 1000), trainer=trainer)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(cache, lambda tmp: tokenizer.save(str(tmp)))
    return tokenizer


def _line_chunks(text: str, lines_per_chunk: int) -> list[str]:
    # Chunks end at line breaks, where the pre-tokenizer splits anyway, so chunking changes (almost)
    # nothing in the result while letting `tokenizers` work on many chunks in parallel.
    lines = text.splitlines(keepends=True)
    return ["".join(lines[i:i + lines_per_chunk]) for i in range(0, len(lines), lines_per_chunk)]


def encode(tokenizer, text: str) -> torch.Tensor:
    """All of ``text`` as one 1-D LongTensor of token ids."""
    ids = [i for enc in tokenizer.encode_batch(_line_chunks(text, 200)) for i in enc.ids]
    return torch.tensor(ids, dtype=torch.long)


def split_tokens(ids: torch.Tensor, valid_fraction: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train, valid)``: the last ``valid_fraction`` of ``ids`` is held out, as one contiguous piece.

    Contiguous, not random windows: random windows of one text overlap, and validation would then
    score text the model trained on.
    """
    if not 0 < valid_fraction < 1:
        raise ValueError(f"valid_fraction must be in (0, 1), got {valid_fraction}")
    split = len(ids) - int(round(valid_fraction * len(ids)))
    if split <= 0 or split >= len(ids):
        raise ValueError(f"{len(ids)} tokens are too few to split with valid_fraction={valid_fraction}")
    return ids[:split], ids[split:]


# ============================================================================================= model
class Block(nn.Module):
    """Pre-LayerNorm transformer block: causal self-attention, then a 4x GELU MLP, each residual."""

    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads, self.dropout = n_heads, dropout
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model),
                                 nn.Dropout(dropout))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        # (b, t, 3, heads, d/heads) -> three (b, heads, t, d/heads)
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,  # token t sees tokens <= t only
                                           dropout_p=self.dropout if self.training else 0.0)
        x = x + self.drop(self.proj(y.transpose(1, 2).reshape(b, t, d)))
        return x + self.mlp(self.norm2(x))


class TinyLM(nn.Module):
    """A small decoder-only transformer; ``forward(ids (B, T)) -> logits (B, T, vocab_size)``.

    ``embedding`` is any module mapping a LongTensor of ids to ``(..., d_model)`` vectors (default:
    ``nn.Embedding(vocab_size, d_model)``). It keeps its own initialisation: how a TT embedding is
    initialised is part of what the experiment compares.
    """

    def __init__(self, vocab_size: int, d_model: int, n_layers: int, n_heads: int, context: int,
                 embedding: nn.Module | None = None, dropout: float = 0.0):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        self.vocab_size, self.context = vocab_size, context
        self.embedding = embedding if embedding is not None else nn.Embedding(vocab_size, d_model)
        self.position = nn.Parameter(torch.zeros(context, d_model))  # learned, one vector per position
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(d_model, n_heads, dropout) for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model)
        # Untied and dense in every variant: tying it to a TT input embedding would change the output
        # layer too, and perplexity differences would no longer come from the input embedding only.
        self.head = nn.Linear(d_model, vocab_size, bias=False)

        nn.init.normal_(self.position, std=0.02)
        own = {id(m) for m in self.embedding.modules()}
        for module in self.modules():
            if isinstance(module, nn.Linear) and id(module) not in own:  # never re-init the embedding
                nn.init.normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.dim() != 2:
            raise ValueError(f"ids must be (batch, time), got shape {tuple(ids.shape)}")
        if ids.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"ids must be an integer tensor (torch.long), got {ids.dtype}")
        if not 0 < ids.shape[1] <= self.context:
            raise ValueError(f"sequence length {ids.shape[1]} must be between 1 and context={self.context}")
        x = self.drop(self.embedding(ids) + self.position[: ids.shape[1]])
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def make_embedding(name: str, vocab_size: int, d_model: int) -> nn.Module:
    """An input embedding by name: ``"dense"`` or ``"tt-r<rank>[-c<cores>][-<phase>]"`` (e.g. ``"tt-r16"``,
    ``"tt-r8-c3-complex"``), each with its own default initialisation."""
    if name == "dense":
        return nn.Embedding(vocab_size, d_model)
    parts = name.split("-")
    if len(parts) < 2 or parts[0] != "tt" or not parts[1][:1] == "r" or not parts[1][1:].isdigit():
        raise ValueError(f"embedding name {name!r}: use 'dense' or 'tt-r<rank>[-c<cores>][-<phase>]', e.g. 'tt-r16'")
    kwargs = {"num_cores": 2}
    for part in parts[2:]:
        if part[:1] == "c" and part[1:].isdigit():
            kwargs["num_cores"] = int(part[1:])
        else:
            kwargs["phase"] = part
    from labkit.htt import HolographicTTEmbedding  # imported late: the model above needs none of it

    # The tokenizer only emits ids below vocab_size, so skip the range check: it costs a host
    # sync per step, which stalls the GPU's queue in a training loop.
    return HolographicTTEmbedding(vocab_size, d_model, int(parts[1][1:]), check_ids=False, **kwargs)


# ========================================================================================== training
@dataclass
class LMConfig:
    steps: int = 1000
    batch_size: int = 32
    context: int = 256
    lr: float = 3e-3
    weight_decay: float = 0.1
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1   # the cosine decays to lr * min_lr_ratio at the last step
    eval_every: int = 200
    eval_batches: int = 16      # validation windows = eval_batches * batch_size
    grad_clip: float = 1.0
    seed: int = 0               # seeds the batch sampler only: every variant sees the same batches
    amp: bool = True            # bf16 autocast, on CUDA only


def _windows(ids: torch.Tensor, starts: torch.Tensor, context: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs ``ids[s : s+context]`` and targets shifted by one, for each start ``s``."""
    chunk = ids[starts[:, None] + torch.arange(context + 1)]
    return chunk[:, :-1], chunk[:, 1:]


def _autocast(device: torch.device, amp: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda")


@torch.no_grad()
def evaluate(model: nn.Module, valid_ids: torch.Tensor, context: int, batches: int, batch_size: int,
             device: torch.device | str, amp: bool = True) -> float:
    """Mean next-token loss (nats) over ``batches * batch_size`` evenly spaced windows of ``valid_ids``.

    The windows are fixed, not sampled, so two calls (or two models) are scored on the same text.
    """
    device = torch.device(device)
    if len(valid_ids) < context + 1:
        raise ValueError(f"need more than context={context} validation tokens, got {len(valid_ids)}")
    starts = torch.linspace(0, len(valid_ids) - context - 1, batches * batch_size).long()
    was_training = model.training
    model.eval()
    try:
        total = torch.zeros((), device=device)
        for chunk in starts.split(batch_size):
            x, y = (t.to(device) for t in _windows(valid_ids, chunk, context))
            with _autocast(device, amp):
                logits = model(x)
            total += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum")
        return total.item() / (len(starts) * context)
    finally:
        model.train(was_training)


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    # Decay the matrices of the transformer only. Biases and LayerNorm gains are not decayed (as
    # usual), nor is the input embedding: decaying TT cores shrinks a *product* of factors, which
    # is a different regulariser from decaying a dense table, and the variants should differ in
    # their embedding only.
    embedding = {id(p) for p in model.embedding.parameters()} if hasattr(model, "embedding") else set()
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 and id(p) not in embedding else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def train_lm(model: nn.Module, train_ids: torch.Tensor, valid_ids: torch.Tensor, config: LMConfig,
             device: torch.device | str, desc: str = "") -> dict:
    """Train ``model`` with AdamW (linear warm-up, cosine decay) on random windows of ``train_ids``.

    Returns the history: ``step``, ``train_loss`` (mean since the previous evaluation) and
    ``valid_loss``, three aligned lists with one entry per evaluation (every ``eval_every`` steps
    and after the last); ``valid_step`` (the same as ``step``), ``valid_ppl`` (final),
    ``seconds`` (wall time) and ``tokens_per_s`` (training tokens per second, evaluation excluded).
    The dict is built only once training has finished: an interrupted run raises and returns
    nothing half-done; the model keeps the weights of the last completed step.
    """
    device = torch.device(device)
    if len(train_ids) < config.context + 2:
        raise ValueError(f"need more than context+1={config.context + 1} training tokens, got {len(train_ids)}")
    model.to(device).train()
    opt = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.lr, betas=(0.9, 0.95),
                            fused=device.type == "cuda")

    def lr_at(step: int) -> float:
        if step < config.warmup_steps:  # warm-up: Adam's early steps are noisy, keep them small
            return config.lr * (step + 1) / config.warmup_steps
        progress = min(1.0, (step - config.warmup_steps) / max(1, config.steps - 1 - config.warmup_steps))
        return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))

    # The sampler has its own generator on the CPU: the batches do not depend on the model's
    # initialisation, on the device, or on anything else that draws random numbers.
    gen = torch.Generator().manual_seed(config.seed)
    steps, train_losses, valid_losses = [], [], []
    running, since = torch.zeros((), device=device), 0  # summed on the device: no sync per step
    started, eval_seconds = time.perf_counter(), 0.0
    with tqdm(total=config.steps, desc=desc or "train", leave=False) as bar:
        for step in range(config.steps):
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            starts = torch.randint(0, len(train_ids) - config.context - 1, (config.batch_size,), generator=gen)
            x, y = (t.to(device, non_blocking=True) for t in _windows(train_ids, starts, config.context))
            with _autocast(device, config.amp):
                logits = model(x)
            loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            opt.step()
            running += loss.detach()
            since += 1
            bar.update()
            if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
                train_loss = running.item() / since  # .item() waits for the GPU: timing stays honest
                t0 = time.perf_counter()
                valid_loss = evaluate(model, valid_ids, config.context, config.eval_batches, config.batch_size,
                                      device, config.amp)
                eval_seconds += time.perf_counter() - t0
                steps.append(step + 1)
                train_losses.append(train_loss)
                valid_losses.append(valid_loss)
                running, since = torch.zeros((), device=device), 0
                bar.set_postfix(train=f"{train_loss:.3f}", valid=f"{valid_loss:.3f}")
    seconds = time.perf_counter() - started
    return {"step": steps, "train_loss": train_losses, "valid_loss": valid_losses, "valid_step": list(steps),
            "valid_ppl": math.exp(valid_losses[-1]) if valid_losses else float("nan"), "seconds": seconds,
            "tokens_per_s": config.steps * config.batch_size * config.context / max(seconds - eval_seconds, 1e-9)}

"""Benchmark suite ``htt``: TT-embedding lookups against ``nn.Embedding``, time and memory.

``python -m labkit.bench htt`` measures, at the issue's configuration (vocab 50,000, d_model
1,024, rank 16, fp32, 16,384 tokens):

* forward + backward of the lookup (gradients of the parameters only; the ids need none) for
  ``nn.Embedding`` with a dense and a sparse gradient, the plain gather-and-einsum TT (the
  seed's formulation), the recompute-in-backward PyTorch TT and the Triton TT; for uniformly
  drawn ids and for Zipf-distributed ids (frequent tokens have small ids, as in a BPE
  vocabulary: the hot-spot case for the backward's reductions);
* the same against the number of tokens (for the plot);
* the memory components of one training step (:mod:`labkit.htt.memory`) for ``nn.Embedding``
  and TT embeddings at several ranks and core counts.

The TT rows skip the id range check (``check_ids=False``: it costs one host sync, which
``nn.Embedding`` does not pay because it checks on the device); one row keeps it to show the cost.
"""
from __future__ import annotations

import sys

import torch
from torch import nn

from labkit.bench.harness import peak_memory_mib, time_fn, time_graph, time_loop
from labkit.htt.memory import measure_embedding, memory_table
from labkit.htt.tt import HolographicTTEmbedding


def zipf_ids(vocab_size: int, n: int, exponent: float = 1.1, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` ids drawn with probability proportional to ``1 / (id + 1) ** exponent``."""
    weights = 1.0 / torch.arange(1, vocab_size + 1, dtype=torch.float64) ** exponent
    return torch.multinomial(weights, n, replacement=True, generator=generator)


def _variants(vocab: int, d_model: int, rank: int, on_gpu: bool) -> dict[str, nn.Module]:
    tt = dict(vocab_size=vocab, d_model=d_model, rank=rank, check_ids=False)
    variants = {
        "nn.Embedding (dense grad)": nn.Embedding(vocab, d_model),
        "nn.Embedding (sparse grad)": nn.Embedding(vocab, d_model, sparse=True),
        "TT gather+einsum (seed)": HolographicTTEmbedding(**tt, backend="reference"),
        "TT recompute (torch)": HolographicTTEmbedding(**tt, backend="torch"),
    }
    if on_gpu:
        variants["TT triton"] = HolographicTTEmbedding(**tt, backend="triton")
        variants["TT triton, checked ids"] = HolographicTTEmbedding(**{**tt, "check_ids": True}, backend="triton")
    return variants


def _fwd_bwd(module: nn.Module, ids: torch.Tensor, grad_out: torch.Tensor):
    params = list(module.parameters())
    return lambda: torch.autograd.grad(module(ids), params, grad_out)


def _progress(row: dict) -> None:
    # One line per timed row on stderr: the suite runs for minutes (autotuning included).
    print(f"[htt] {row['name']:28s} {row['case']:11s} {row['ids']:7s} {row['tokens']:6d} tokens "
          f"{row['median_ms']:8.3f} ms", file=sys.stderr, flush=True)


def run(device: torch.device, quick: bool) -> tuple[dict, list[dict]]:
    on_gpu = device.type == "cuda"
    quick = quick or not on_gpu
    vocab, d_model, rank = (5000, 128, 8) if quick else (50000, 1024, 16)
    tokens = 1024 if quick else 16384
    repeats = 3 if quick else 50
    g = torch.Generator().manual_seed(0)
    id_sets = {"uniform": torch.randint(0, vocab, (tokens,), generator=g), "zipf": zipf_ids(vocab, tokens, generator=g)}
    variants = {name: m.to(device) for name, m in _variants(vocab, d_model, rank, on_gpu).items()}
    rows = []
    for dist, ids in id_sets.items():
        ids = ids.to(device)
        grad_out = torch.randn(tokens, d_model, generator=g).to(device)
        base = {}
        for name, module in variants.items():
            fn = _fwd_bwd(module, ids, grad_out)
            timing = time_fn(fn, device, warmup=3, repeats=repeats)
            fwd = time_fn(lambda: module(ids), device, warmup=3, repeats=repeats)
            base.setdefault("embedding", timing["median_ms"])
            if name.startswith("TT gather"):
                base["reference"] = timing["median_ms"]
            graph = time_graph(fn, device, repeats=repeats)
            loop = time_loop(fn, device)
            base.setdefault("embedding_graph", graph and graph["median_ms"])
            base.setdefault("embedding_loop", loop and loop["median_ms"])
            rows.append({"name": name, "case": "fwd+bwd", "ids": dist, "tokens": tokens, "vocab": vocab,
                         "d_model": d_model, "rank": rank, "dtype": "float32", **timing,
                         "forward_ms": fwd["median_ms"], "graph_ms": graph and graph["median_ms"],
                         "loop_ms": loop and loop["median_ms"],
                         "peak_mib": peak_memory_mib(fn, device),
                         "x_embedding": timing["median_ms"] / base["embedding"],
                         "x_embedding_graph": graph and base["embedding_graph"] and
                         graph["median_ms"] / base["embedding_graph"],
                         "x_embedding_loop": loop and base["embedding_loop"] and
                         loop["median_ms"] / base["embedding_loop"]})
            _progress(rows[-1])
        for row in rows[-len(variants):]:
            row["speedup_vs_reference"] = base["reference"] / row["median_ms"]

    # Time against the number of tokens (uniform ids), for the chapter's plot.
    sweep = (256, 1024) if quick else (1024, 4096, 16384, 65536)
    for n in sweep:
        ids = torch.randint(0, vocab, (n,), generator=g).to(device)
        grad_out = torch.randn(n, d_model, generator=g).to(device)
        for name in ("nn.Embedding (dense grad)", "TT gather+einsum (seed)", "TT triton" if on_gpu else "TT recompute (torch)"):
            timing = time_fn(_fwd_bwd(variants[name], ids, grad_out), device, warmup=2, repeats=repeats)
            rows.append({"name": name, "case": "token sweep", "ids": "uniform", "tokens": n, "vocab": vocab,
                         "d_model": d_model, "rank": rank, "dtype": "float32", **timing})
            _progress(rows[-1])

    # Memory of one training step (AdamW; SparseAdam for the sparse table).
    ids = id_sets["zipf"].to(device)
    tt = dict(vocab_size=vocab, d_model=d_model, check_ids=False)
    reports = [measure_embedding("nn.Embedding (dense grad)", nn.Embedding(vocab, d_model).to(device), ids),
               measure_embedding("nn.Embedding (sparse grad)", nn.Embedding(vocab, d_model, sparse=True).to(device),
                                 ids, torch.optim.SparseAdam),
               measure_embedding(f"TT gather+einsum (seed), r={rank}",
                                 HolographicTTEmbedding(**tt, rank=rank, backend="reference").to(device), ids)]
    for r in (8, 16, 32, 64):
        reports.append(measure_embedding(f"TT r={r}, 2 cores", HolographicTTEmbedding(**tt, rank=r).to(device), ids))
    reports.append(measure_embedding(f"TT r={rank}, 3 cores", HolographicTTEmbedding(**tt, rank=rank, num_cores=3).to(device), ids))
    reports.append(measure_embedding(f"TT r={rank}, complex", HolographicTTEmbedding(**tt, rank=rank, phase="complex").to(device), ids))
    for row in memory_table(reports, "nn.Embedding (dense grad)"):
        rows.append({"case": "memory", "ids": "zipf", "vocab": vocab, "d_model": d_model, "dtype": "float32", **row})

    config = {"vocab": vocab, "d_model": d_model, "rank": rank, "tokens": tokens,
              "note": "fwd+bwd = lookup + gradients of the parameters. median_ms: each call timed alone, the GPU "
                      "idle at its start, so host overhead (Python, launches) is on the clock; loop_ms: calls back "
                      "to back with no sync between them, the steady state of a training loop whose host runs "
                      "ahead; graph_ms: replayed from a CUDA graph, the GPU work alone (None where capture "
                      "fails); x_embedding*: time / nn.Embedding (dense) time on the same ids, same method; "
                      "memory rows: see labkit.htt.memory"}
    return config, rows

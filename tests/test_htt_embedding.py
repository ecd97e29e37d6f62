"""TT embeddings: factorisation, parameter counts, the phase options, and the lookup kernels.

The Triton lookup runs in the interpreter on CPU (``TRITON_INTERPRET=1``, set by conftest) and
on the GPU when there is one; both are checked against the dense table and the plain
gather-and-einsum formulation, values and gradients.
"""
import math

import pytest
import torch

from labkit.backend import use_triton
from labkit.htt import HolographicTTEmbedding, factorize, tt_lookup, tt_lookup_reference, tt_shapes
from labkit.htt.memory import measure_embedding, saved_activation_bytes
from labkit.htt.tt import complex_to_real_cores, token_digits

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_triton = pytest.mark.skipif(not use_triton(torch.empty(0, device=DEVICE)),
                                  reason="needs CUDA or TRITON_INTERPRET=1")


@pytest.mark.parametrize("n, k, expected", [
    (50000, 2, (250, 200)), (50257, 2, (225, 224)), (1024, 2, (32, 32)), (1024, 3, (16, 8, 8)),
    (50000, 3, (50, 40, 25)), (10000, 2, (100, 100)),
])
def test_factorize(n, k, expected):
    assert factorize(n, k) == expected
    assert math.prod(factorize(n, k)) >= n


def test_factorize_pads_when_there_is_no_balanced_split():
    for n in (50257, 49999, 12345, 7):
        factors = factorize(n, 2)
        assert math.prod(factors) >= n and math.prod(factors) < n * 1.05 + 2


def test_parameter_count_of_the_seed_configuration():
    # 50000 x 1024 at rank 16 with 2 cores: (250, 1, 32, 16) and (200, 16, 32, 1).
    emb = HolographicTTEmbedding(50000, 1024, 16)
    assert tt_shapes(50000, 1024, 16, 2) == [(250, 1, 32, 16), (200, 16, 32, 1)]
    assert emb.num_parameters() == 250 * 32 * 16 + 200 * 16 * 32 == 230_400
    assert 1 - emb.num_parameters() / (50000 * 1024) > 0.995  # 99.55% fewer
    assert HolographicTTEmbedding(50000, 1024, 16, phase="cos").num_parameters() == 230_416


def test_digits_are_mixed_radix():
    ids = torch.arange(0, 60)
    i1, i2, i3 = token_digits(ids, (3, 4, 5))
    assert torch.equal(i1 * 20 + i2 * 5 + i3, ids)


@pytest.mark.parametrize("num_cores", [2, 3])
@pytest.mark.parametrize("phase", [None, "cos", "complex"])
def test_reference_lookup_matches_the_dense_table(num_cores, phase):
    torch.manual_seed(0)
    emb = HolographicTTEmbedding(997, 40, 3, num_cores, phase, backend="reference").double()
    ids = torch.randint(0, 997, (4, 9))
    assert torch.allclose(emb(ids), emb.to_dense()[ids], rtol=0, atol=1e-12)


def test_init_gives_rows_the_intended_scale():
    torch.manual_seed(0)
    for num_cores in (2, 3):
        for phase in (None, "complex"):
            table = HolographicTTEmbedding(4096, 256, 16, num_cores, phase, init_std=0.5).to_dense()
            assert 0.4 < table.std().item() < 0.6, (num_cores, phase, table.std().item())


def test_cos_phase_is_absorbed_by_core_one():
    """The seed's holographic phase is a per-rank real scale: folding it into core 1 is exact."""
    torch.manual_seed(0)
    emb = HolographicTTEmbedding(500, 64, 8, phase="cos").double()
    plain = emb.absorb_phase()
    assert plain.phase is None and plain.num_parameters() == emb.num_parameters() - 8
    assert torch.equal(plain.to_dense(), emb.to_dense())


def test_complex_phase_is_the_real_part_of_a_complex_tt():
    torch.manual_seed(0)
    emb = HolographicTTEmbedding(300, 24, 4, num_cores=3, phase="complex").double()
    z = [torch.complex(x, y) for x, y in zip(emb.cores, emb.cores_imag)]
    row = z[0][:, 0]  # complex TT contracted with complex arithmetic
    for core in z[1:]:
        row = torch.einsum("xpa,vaqb->xvpqb", row, core).reshape(-1, row.shape[1] * core.shape[2], core.shape[3])
    expected = row[:300, :24, 0].real
    assert torch.allclose(emb.to_dense(), expected, atol=1e-12)
    assert len(complex_to_real_cores(list(emb.cores), list(emb.cores_imag))) == 3


def _grads(emb, ids, weight):
    out = emb(ids)
    return out, torch.autograd.grad((out * weight).sum(), list(emb.parameters()))


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_triton)])
@pytest.mark.parametrize("vocab, d_model, rank, phase", [
    (1000, 64, 8, None),       # factors exactly: (40, 25) x (8, 8)
    (997, 40, 5, "cos"),       # a prime vocabulary (padded) and a cropped d_model
    (256, 48, 3, "complex"),   # rank 6 after the complex -> real map
])
def test_lookup_forward_and_backward_match_the_reference_fp32(backend, vocab, d_model, rank, phase):
    torch.manual_seed(0)
    emb = HolographicTTEmbedding(vocab, d_model, rank, 2, phase, backend=backend).to(DEVICE)
    ref = HolographicTTEmbedding(vocab, d_model, rank, 2, phase, backend="reference").to(DEVICE)
    ref.load_state_dict(emb.state_dict())
    # Repeated ids and one very frequent id: runs of equal digits cross the backward's chunks.
    ids = torch.cat([torch.randint(0, vocab, (150,)), torch.full((70,), 3), torch.randint(0, 8, (40,))]).to(DEVICE)
    ids = ids[torch.randperm(ids.numel(), device=DEVICE)].reshape(20, 13)
    weight = torch.randn(20, 13, d_model, device=DEVICE)
    out, grads = _grads(emb, ids, weight)
    out_ref, grads_ref = _grads(ref, ids, weight)
    assert out.shape == (20, 13, d_model)
    torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-5)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-4)


@needs_triton
def test_triton_lookup_stays_right_on_repeated_calls():
    """The first call tunes, the second binds, later ones go through the cached launcher: all
    must agree, also with int32 ids, ids that are a view at an odd offset and other token counts."""
    torch.manual_seed(0)
    emb = HolographicTTEmbedding(1000, 64, 8, backend="triton").to(DEVICE)
    ref = HolographicTTEmbedding(1000, 64, 8, backend="reference").to(DEVICE)
    ref.load_state_dict(emb.state_dict())
    ids = torch.randint(0, 1000, (97,), device=DEVICE)
    for batch in [ids] * 4 + [ids.int()] * 2 + [ids[1:]] * 2 + [ids[:17]] * 2:
        weight = torch.randn(*batch.shape, 64, device=DEVICE)
        out, grads = _grads(emb, batch, weight)
        out_ref, grads_ref = _grads(ref, batch.long(), weight)
        torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-5)
        for g, g_ref in zip(grads, grads_ref):
            torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-4)


@needs_triton
def test_triton_lookup_bf16_cores():
    torch.manual_seed(0)
    cores = [c.to(DEVICE) for c in HolographicTTEmbedding(1000, 64, 8).cores]
    cores16 = [c.detach().bfloat16().requires_grad_() for c in cores]
    ids = torch.randint(0, 1000, (300,), device=DEVICE)
    weight = torch.randn(300, 64, device=DEVICE)
    out = tt_lookup(cores16, ids, 64, backend="triton")
    assert out.dtype == torch.bfloat16
    grads = torch.autograd.grad((out.float() * weight).sum(), cores16)
    leaves = [c.detach().float().requires_grad_() for c in cores16]  # the same bf16 values, in fp32
    out_ref = tt_lookup_reference(leaves, ids, 64)
    grads_ref = torch.autograd.grad((out_ref * weight).sum(), leaves)
    torch.testing.assert_close(out.float(), out_ref, rtol=1e-2, atol=1e-2)
    for g, g_ref in zip(grads, grads_ref):
        assert g.dtype == torch.bfloat16
        torch.testing.assert_close(g.float(), g_ref, rtol=2e-2, atol=2e-2 * g_ref.abs().max().item())


def test_three_cores_through_the_recompute_path():
    torch.manual_seed(0)
    emb = HolographicTTEmbedding(2000, 96, 6, num_cores=3, backend="torch").double()
    ref = HolographicTTEmbedding(2000, 96, 6, num_cores=3, backend="reference").double()
    ref.load_state_dict(emb.state_dict())
    ids = torch.randint(0, 2000, (5, 11))
    weight = torch.randn(5, 11, 96, dtype=torch.float64)
    out, grads = _grads(emb, ids, weight)
    out_ref, grads_ref = _grads(ref, ids, weight)
    torch.testing.assert_close(out, out_ref)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref)


@needs_triton
def test_triton_lookup_names_what_it_does_not_handle():
    emb = HolographicTTEmbedding(2000, 96, 6, num_cores=3).to(DEVICE)
    with pytest.raises(ValueError, match="2 cores"):
        tt_lookup(list(emb.cores), torch.zeros(3, dtype=torch.long, device=DEVICE), 96, backend="triton")


def _saved_bytes(emb, ids):
    return saved_activation_bytes(lambda: emb(ids), exclude=emb)[0]


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_triton)])
def test_recompute_paths_save_only_ids_and_cores(backend):
    emb = HolographicTTEmbedding(1000, 64, 8, backend=backend).to(DEVICE)
    ids = torch.randint(0, 1000, (8, 16), device=DEVICE)
    assert _saved_bytes(emb, ids) <= ids.numel() * ids.element_size()  # the ids, nothing else
    emb.backend = "reference"  # gather + einsum keeps the gathered slices: N r (d_1 + d_2) numbers
    assert _saved_bytes(emb, ids) >= ids.numel() * 8 * (8 + 8) * 4


def test_bad_input_is_named():
    emb = HolographicTTEmbedding(100, 16, 4)
    with pytest.raises(IndexError, match="out of range for vocab_size=100"):
        emb(torch.tensor([0, 100]))
    with pytest.raises(IndexError, match="-1"):
        emb(torch.tensor([-1]))
    with pytest.raises(TypeError, match="ids.long"):
        emb(torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="num_cores"):
        HolographicTTEmbedding(100, 16, 4, num_cores=4)
    with pytest.raises(ValueError, match="phase"):
        HolographicTTEmbedding(100, 16, 4, phase="sin")
    with pytest.raises(ValueError, match="rank"):
        HolographicTTEmbedding(100, 16, 0)
    with pytest.raises(ValueError, match="absorb_phase"):
        emb.absorb_phase()
    assert emb(torch.zeros(0, dtype=torch.long)).shape == (0, 16)


def test_memory_components_of_a_dense_and_a_tt_embedding():
    ids = torch.randint(0, 5000, (256,))
    dense = measure_embedding("dense", torch.nn.Embedding(5000, 64), ids)
    table = 5000 * 64 * 4
    assert (dense.params, dense.grads, dense.optimizer) == (table, table, 2 * table)  # AdamW: two moments
    sparse = measure_embedding("sparse", torch.nn.Embedding(5000, 64, sparse=True), ids, torch.optim.SparseAdam)
    assert sparse.grads < table / 10 and sparse.optimizer == 2 * table  # SparseAdam's moments stay dense
    tt = measure_embedding("tt", HolographicTTEmbedding(5000, 64, 8, backend="torch"), ids)
    cores = tt.params
    assert (tt.grads, tt.optimizer) == (cores, 2 * cores)
    assert tt.activations <= ids.numel() * 8 and tt.output == 256 * 64 * 4
    assert tt.footprint / dense.footprint < 0.05


def test_backward_configs_pruned_by_register_demand():
    """Large ranks keep only the configurations that compile in seconds (see triton_tt's comment)."""
    import triton

    from labkit.htt.triton_tt import BACKWARD_SHAPES, _prune_backward

    configs = [triton.Config({"BLOCK_T": t}, num_warps=w) for t, w in BACKWARD_SHAPES]

    def kept(rank):
        tile = max(16, triton.next_power_of_2(rank))
        return [(c.kwargs["BLOCK_T"], c.num_warps) for c in _prune_backward(configs, {}, BLOCK_D1=32,
                                                                             BLOCK_D2=32, BLOCK_R=tile)]

    assert kept(16) == list(BACKWARD_SHAPES)  # rank 16 at d_model 1,024: the whole list (1-4 s each)
    assert kept(32) == [(16, 8), (16, 16)]
    assert kept(64) == [(16, 16)]             # the others took 9-96 s to compile, or did not fit
    assert kept(256) == [(16, 16)]            # nothing fits: the least loaded one, never an empty list


def test_backward_shared_memory_estimate_and_pruning(monkeypatch):
    """The H100 case that failed (d_model 1,280, rank 32): 262,144 bytes at 16 tokens, over 232,448;
    configurations beyond the card's shared memory are dropped before Triton compiles them."""
    import triton

    from labkit.htt import triton_tt

    assert triton_tt.backward_shared_bytes(16, 32, 64, 32) == 262_144
    monkeypatch.setattr(triton_tt, "_shared_limit", lambda: 232_448)
    assert not triton_tt.backward_fits(dict(BLOCK_D1=32, BLOCK_D2=64, BLOCK_R=32))
    assert triton_tt.backward_fits(dict(BLOCK_D1=32, BLOCK_D2=32, BLOCK_R=16))
    configs = [triton.Config({"BLOCK_T": t}, num_warps=w) for t, w in triton_tt.BACKWARD_SHAPES]
    kept = triton_tt._prune_backward(configs, {}, BLOCK_D1=32, BLOCK_D2=32, BLOCK_R=64)  # 196,608 B at 16
    assert [c.kwargs["BLOCK_T"] for c in kept] == [16]


@needs_triton
def test_backward_falls_back_to_pytorch_when_the_kernel_does_not_fit(monkeypatch):
    from labkit.htt import ops, triton_tt

    monkeypatch.setattr(triton_tt, "_shared_limit", lambda: 1024)  # nothing fits
    monkeypatch.setattr(ops, "_WARNED", set())
    torch.manual_seed(0)
    emb = HolographicTTEmbedding(1000, 64, 8, backend="triton").to(DEVICE)
    ref = HolographicTTEmbedding(1000, 64, 8, backend="reference").to(DEVICE)
    ref.load_state_dict(emb.state_dict())
    ids = torch.randint(0, 1000, (5, 9), device=DEVICE)
    weight = torch.randn(5, 9, 64, device=DEVICE)
    with pytest.warns(RuntimeWarning, match="shared memory"):
        out, grads = _grads(emb, ids, weight)
    out_ref, grads_ref = _grads(ref, ids, weight)
    torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-5)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-4)

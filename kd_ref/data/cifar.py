"""CIFAR-10 and CIFAR-100 from their real on-disk format (the "python version").

Krizhevsky (2009), "Learning Multiple Layers of Features from Tiny Images", and the
data set page https://www.cs.toronto.edu/~kriz/cifar.html. After extracting
``cifar-10-python.tar.gz`` (or ``cifar-100-python.tar.gz``) into a folder ``DIR``::

    DIR/cifar-10-batches-py/data_batch_1 .. data_batch_5   10,000 training images each
    DIR/cifar-10-batches-py/test_batch                     10,000 test images
    DIR/cifar-10-batches-py/batches.meta                   b"label_names" (10 names)
    DIR/cifar-100-python/train, test                       50,000 / 10,000 images
    DIR/cifar-100-python/meta                              b"fine_label_names" (100 names)

Each file is a dict pickled with Python 2's cPickle. Its keys are Python 2 strings:
``pickle.load(f, encoding="bytes")`` gives ``b"data"``, ``b"labels"`` (CIFAR-100:
``b"fine_labels"`` and ``b"coarse_labels"``), ``b"filenames"``, ``b"batch_label"``; with
``encoding="latin1"`` (torchvision's choice) the same keys come back as ``str``.
``data`` is a uint8 array of shape (N, 3072): per image, the 1,024 red values, then
green, then blue, each plane row-major. So ``data.reshape(N, 3, 32, 32)`` is already
(image, channel, row, column).

``write_fake_cifar`` writes a small generated set in this format: pickle protocol 2
(the highest cPickle has), Python 2 string opcodes for every string, the array
pickled as NumPy 1.x did (``numpy.core.multiarray._reconstruct``), so both encodings
load it as they load the real files. Tests read it through the same code as the real
files, and torchvision's own reader accepts it too (only its MD5 check must be
skipped). Its images are class-dependent colour patterns plus noise: learnable, but
numbers measured on them are not meaningful for CIFAR.
"""
from __future__ import annotations

import io
import pickle
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


@dataclass(frozen=True)
class CifarSpec:
    """Where one data set's files are and what its dicts hold."""

    title: str
    folder: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: bytes
    names_key: bytes
    num_classes: int
    archive: str


SPECS = {
    "cifar10": CifarSpec("CIFAR-10", "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)),
                         "test_batch", "batches.meta", b"labels", b"label_names", 10, "cifar-10-python.tar.gz"),
    "cifar100": CifarSpec("CIFAR-100", "cifar-100-python", ("train",), "test", "meta",
                          b"fine_labels", b"fine_label_names", 100, "cifar-100-python.tar.gz"),
}

# Published per-channel statistics of the 50,000 training images, pixel values in [0, 1].
# CIFAR-10: fb.resnet.torch (datasets/cifar10.lua) gives mean (125.3, 123.0, 113.9) and std
# (63.0, 62.1, 66.7) on the 0-255 scale; divided by 255, as below. (The std (0.2023, 0.1994,
# 0.2010) seen in many repositories is not the pixel std of the training set.)
# CIFAR-100: the values in the CRD repository's data loader (dataset/cifar100.py).
# The recipes compute the statistics of the training split they load (``channel_stats``)
# and print them beside these.
PUBLISHED_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
}


@dataclass(frozen=True)
class CifarData:
    """A whole data set in memory: images ``(N, 3, 32, 32)`` uint8, labels ``(N,)`` int64."""

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: tuple[str, ...]
    folder: Path
    generated: bool = False   # written by ``write_fake_cifar`` (its file names say so), not the real images


class CifarFormatError(ValueError):
    """A CIFAR file exists but does not hold what the format promises."""


def _spec(dataset: str) -> CifarSpec:
    if dataset not in SPECS:
        raise ValueError(f"dataset must be one of {', '.join(SPECS)}, got dataset={dataset!r}")
    return SPECS[dataset]


def cifar_folder(root: str | Path, dataset: str = "cifar10") -> Path:
    """``root/cifar-10-batches-py`` or ``root/cifar-100-python``."""
    return Path(root) / _spec(dataset).folder


def has_cifar(root: str | Path, dataset: str = "cifar10") -> bool:
    """True when every file of ``dataset`` is present under ``root`` (not checked for corruption)."""
    spec, folder = _spec(dataset), cifar_folder(root, dataset)
    return all((folder / f).is_file() for f in (*spec.train_files, spec.test_file, spec.meta_file))


def download_cifar(root: str | Path, dataset: str = "cifar10") -> None:
    """Fetch and extract the official archive into ``root`` with torchvision's downloader.

    torchvision checks the archive's MD5 and extracts it; reading is then done by
    ``load_cifar``. Needs a network connection (never used by the tests).
    """
    from torchvision import datasets

    _spec(dataset)
    Path(root).mkdir(parents=True, exist_ok=True)
    cls = datasets.CIFAR10 if dataset == "cifar10" else datasets.CIFAR100
    cls(str(root), train=True, download=True)


def _what_to_do(root: Path, dataset: str) -> str:
    spec = _spec(dataset)
    return (f"run with --download (load_cifar(..., download=True)) to fetch {spec.archive}, or point --data at "
            f"the folder that contains {spec.folder}/ (now {root})")


def _read_pickle(path: Path, root: Path, dataset: str) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{_spec(dataset).title} not found: expected {path}; {_what_to_do(root, dataset)}")
    try:
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="bytes")
    except Exception as err:  # truncated or overwritten files raise many different errors
        raise CifarFormatError(f"{path} is corrupt ({type(err).__name__}: {err}); delete {path.parent} and "
                               f"{_what_to_do(root, dataset)}") from None
    if not isinstance(entry, dict):
        raise CifarFormatError(f"{path} is corrupt (holds a {type(entry).__name__}, not a dict); delete "
                               f"{path.parent} and {_what_to_do(root, dataset)}")
    return entry


def read_batch(path: str | Path, dataset: str = "cifar10", root: str | Path | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """One batch file: images ``(N, 3, 32, 32)`` uint8 and labels ``(N,)`` int64, checked."""
    images, labels, _ = _read_checked_batch(Path(path), dataset, root)
    return images, labels


def _read_checked_batch(path: Path, dataset: str, root) -> tuple[np.ndarray, np.ndarray, bool]:
    spec, root = _spec(dataset), Path(root) if root is not None else path.parent.parent
    entry = _read_pickle(path, root, dataset)

    def bad(reason):
        return CifarFormatError(f"{path} is corrupt ({reason}); delete {path.parent} and "
                                f"{_what_to_do(root, dataset)}")

    missing = [k.decode() for k in (b"data", spec.label_key) if k not in entry]
    if missing:
        raise bad(f"no {' or '.join(repr(m) for m in missing)} entry; keys are "
                  f"{sorted(k.decode('latin1') if isinstance(k, bytes) else str(k) for k in entry)}")
    data, labels = entry[b"data"], np.asarray(entry[spec.label_key])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        got = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise bad(f"'data' must be a uint8 array of shape (N, 3072), got a {got}")
    if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer):
        raise bad(f"{len(data)} images but labels of shape {labels.shape} and dtype {labels.dtype}")
    if len(labels) and (labels.min() < 0 or labels.max() >= spec.num_classes):
        raise bad(f"labels must lie in 0..{spec.num_classes - 1}, got {labels.min()}..{labels.max()}")
    names = entry.get(b"filenames")
    first = names[0] if isinstance(names, list) and names else b""
    generated = isinstance(first, bytes) and first.startswith(b"generated_")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64), generated


def load_cifar(root: str | Path, dataset: str = "cifar10", download: bool = False) -> CifarData:
    """Read CIFAR-10 / CIFAR-100 from ``root`` (see the module docstring for the layout).

    Raises ``FileNotFoundError`` for a missing file and ``CifarFormatError`` (a
    ``ValueError``) for a corrupt one; both messages say what to do.
    """
    spec, root = _spec(dataset), Path(root)
    if download and not has_cifar(root, dataset):
        download_cifar(root, dataset)
    folder = cifar_folder(root, dataset)
    train = [_read_checked_batch(folder / name, dataset, root) for name in spec.train_files]
    test_x, test_y, generated = _read_checked_batch(folder / spec.test_file, dataset, root)
    meta = _read_pickle(folder / spec.meta_file, root, dataset)
    names = meta.get(spec.names_key)
    if not isinstance(names, list) or len(names) != spec.num_classes:
        raise CifarFormatError(f"{folder / spec.meta_file} is corrupt (expected {spec.num_classes} class names "
                               f"under {spec.names_key.decode()!r}); delete {folder} and {_what_to_do(root, dataset)}")
    return CifarData(
        name=dataset,
        train_images=torch.from_numpy(np.concatenate([x for x, _, _ in train])),   # (N, 3, 32, 32) uint8
        train_labels=torch.from_numpy(np.concatenate([y for _, y, _ in train])),   # (N,) int64
        test_images=torch.from_numpy(test_x),
        test_labels=torch.from_numpy(test_y),
        classes=tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names),
        folder=folder,
        generated=generated,
    )


def cifar_or_generated(root: str | Path, dataset: str = "cifar10", *, download: bool = False,
                       generate: tuple[int, int] | None = None, seed: int = 0) -> CifarData:
    """Real CIFAR when it is there (or ``download`` fetches it); else, with ``generate``, a generated set.

    ``generate=(train_size, test_size)``: when the real files are absent and not to be
    downloaded, write a generated set of that size in the exact on-disk format
    (:func:`write_fake_cifar`) to a temporary folder and read it back through
    :func:`load_cifar`, so the real reading code runs; ``CifarData.generated`` says so.
    Without ``generate`` a missing set raises ``FileNotFoundError`` saying what to do.
    The one place the course decides between real and generated data.
    """
    if has_cifar(root, dataset) or download or generate is None:
        return load_cifar(root, dataset, download=download)
    with tempfile.TemporaryDirectory(prefix="kd-ref-cifar-") as tmp:
        write_fake_cifar(tmp, dataset, *generate, seed=seed)
        return load_cifar(tmp, dataset)


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of uint8 ``(N, 3, H, W)`` images, in [0, 1] units.

    Accumulated in float64 over chunks, so 50,000 images need no large float copy.
    """
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} of shape {tuple(images.shape)}")
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    total_sq = torch.zeros_like(total)
    for chunk in images.split(4096):
        x = chunk.to(torch.float64)                                    # (n, C, H, W)
        total += x.sum(dim=(0, 2, 3))
        total_sq += x.pow(2).sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (total_sq / count - mean.pow(2)).clamp_min(0).sqrt()
    return tuple((mean / 255).tolist()), tuple((std / 255).tolist())


# -- writing the format -----------------------------------------------------------------------

class _Py2Str(bytes):
    """Bytes that are written as a Python 2 ``str`` (loads as bytes or, with latin1, as str)."""


def _py2_pickle(obj) -> bytes:
    """Pickle ``obj`` as Python 2's cPickle does with protocol 2, for the types CIFAR uses.

    Python 3's pickler writes ``bytes`` in a form Python 2 never produced, which
    ``encoding="latin1"`` readers (torchvision) do not turn into ``str``; hence this
    small writer. Supports dict, list, int, None, bool, ``_Py2Str`` and 1-D/2-D uint8
    arrays (written as NumPy 1.x did: ``numpy.core.multiarray._reconstruct`` + state).
    """
    out = io.BytesIO()
    w = out.write

    def string(b: bytes):
        w(b"U" + struct.pack("<B", len(b)) + b if len(b) < 256 else b"T" + struct.pack("<i", len(b)) + b)

    def integer(i: int):
        if 0 <= i < 256:
            w(b"K" + struct.pack("<B", i))
        elif 0 <= i < 65536:
            w(b"M" + struct.pack("<H", i))
        else:
            w(b"J" + struct.pack("<i", i))

    def save(o):
        if isinstance(o, bool) or o is None:
            w({True: b"\x88", False: b"\x89", None: b"N"}[o])
        elif isinstance(o, _Py2Str):
            string(bytes(o))
        elif isinstance(o, (int, np.integer)):
            integer(int(o))
        elif isinstance(o, list):
            w(b"]")
            for start in range(0, len(o), 1000):     # cPickle batches appends by 1,000
                w(b"(")
                for item in o[start:start + 1000]:
                    save(item)
                w(b"e")
        elif isinstance(o, dict):
            w(b"}(")
            for key, value in o.items():
                save(key)
                save(value)
            w(b"u")
        elif isinstance(o, np.ndarray) and o.dtype == np.uint8:
            w(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n")
            w(b"K\x00\x85")                           # shape (0,)
            string(b"b")
            w(b"\x87R(K\x01")                         # _reconstruct(ndarray, (0,), 'b'); state = (1,
            w(b"(")
            for d in o.shape:
                integer(d)
            w(b"t")                                   # shape,
            w(b"cnumpy\ndtype\n")
            string(b"u1")
            w(b"K\x00K\x01\x87R(K\x03")
            string(b"|")
            w(b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb")   # dtype('uint8'),
            w(b"\x89")                                # fortran order False,
            string(np.ascontiguousarray(o).tobytes())  # raw data)
            w(b"tb")
        else:
            raise TypeError(f"cannot write {type(o).__name__} in the CIFAR format")

    w(b"\x80\x02")
    save(obj)
    w(b".")
    return out.getvalue()


CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def fake_images(labels: np.ndarray, num_classes: int, seed: int, sample_seed: int) -> np.ndarray:
    """uint8 ``(N, 3, 32, 32)`` images: a smooth colour pattern per class, shifted at random, plus noise.

    ``seed`` fixes the class patterns (shared by the training and test files);
    ``sample_seed`` the shifts and the noise of these particular images.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:32, 0:32] / 32.0                                      # (32, 32) each
    freq = rng.uniform(0.5, 2.0, size=(num_classes, 3, 2))
    phase = rng.uniform(0, 2 * np.pi, size=(num_classes, 3))
    base = rng.uniform(60, 190, size=(num_classes, 3))
    templates = base[:, :, None, None] + 50 * np.sin(                          # (K, 3, 32, 32)
        2 * np.pi * (freq[..., 0, None, None] * xx + freq[..., 1, None, None] * yy) + phase[..., None, None])
    rng = np.random.default_rng(sample_seed)
    shift = rng.integers(-3, 4, size=(len(labels), 2))
    images = np.stack([np.roll(templates[c], tuple(s), axis=(1, 2)) for c, s in zip(labels, shift)])
    images = images + rng.normal(0, 25, size=images.shape)                    # (N, 3, 32, 32)
    return np.clip(np.rint(images), 0, 255).astype(np.uint8)


def write_fake_cifar(root: str | Path, dataset: str = "cifar10", train_size: int = 500, test_size: int = 100,
                     seed: int = 0) -> Path:
    """Write a generated ``dataset`` of ``train_size`` + ``test_size`` images under ``root``.

    Same files, keys, dtypes and pickle protocol as the real set (CIFAR-10's training
    images are spread over its five ``data_batch_*`` files). Labels are balanced, in a
    seeded order. Returns the data set's folder.
    """
    spec = _spec(dataset)
    n_files = len(spec.train_files)
    if train_size < n_files or test_size < 1:
        raise ValueError(f"need train_size >= {n_files} and test_size >= 1, got {train_size} and {test_size}")
    folder = cifar_folder(root, dataset)
    folder.mkdir(parents=True, exist_ok=True)
    key = _Py2Str

    def batch(n: int, title: str, part: int) -> dict:
        labels = np.random.default_rng([seed, part]).permutation(np.arange(n) % spec.num_classes)
        entry = {key(b"batch_label"): key(title.encode())}
        if dataset == "cifar10":
            entry[key(b"labels")] = labels.tolist()
        else:
            entry[key(b"fine_labels")] = labels.tolist()
            entry[key(b"coarse_labels")] = (labels // 5).tolist()
        entry[key(b"data")] = fake_images(labels, spec.num_classes, seed, sample_seed=seed * 1000 + part).reshape(n, 3072)
        entry[key(b"filenames")] = [key(f"generated_{part}_{i:05d}.png".encode()) for i in range(n)]
        return entry

    sizes = [train_size // n_files + (i < train_size % n_files) for i in range(n_files)]
    for i, (name, n) in enumerate(zip(spec.train_files, sizes)):
        title = f"training batch {i + 1} of {n_files}" if n_files > 1 else "training"
        (folder / name).write_bytes(_py2_pickle(batch(n, title, part=i + 1)))
    test_title = "testing batch 1 of 1" if dataset == "cifar10" else "testing"
    (folder / spec.test_file).write_bytes(_py2_pickle(batch(test_size, test_title, part=0)))
    if dataset == "cifar10":
        meta = {key(b"num_cases_per_batch"): sizes[0], key(b"label_names"): [key(n.encode()) for n in CIFAR10_NAMES],
                key(b"num_vis"): 3072}
    else:
        meta = {key(b"fine_label_names"): [key(f"class_{c:02d}".encode()) for c in range(100)],
                key(b"coarse_label_names"): [key(f"superclass_{c:02d}".encode()) for c in range(20)]}
    (folder / spec.meta_file).write_bytes(_py2_pickle(meta))
    return folder

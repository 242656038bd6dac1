"""Datasets as in-memory numpy arrays, split as Shallue et al. (2019).

`load_dataset(name, data_dir, **options)` returns a `Dataset`. Names: `mnist`,
`fashion_mnist` (official IDX .gz files), `tiny_shakespeare` (characters),
`cifar10` (official binary archive) and `tfds:<name>` (any image+label
tensorflow-datasets dataset, read through its data source: no row is held in
memory until the engine places the data, harness.engine.records). The data folder is `data_dir`, else the
environment variable `CBS_DATA_DIR`, else a per-user cache folder; it holds
`mnist/`, `fashion_mnist/`, `tiny_shakespeare/` and `cifar10/`. Each file is
checked against its official checksum on first use in a process. A file
missing there is taken from the copies shipped with the package (the MNIST
training files, so that the quickstart runs offline), else downloaded once
with pooch from the official mirror, checksum-verified.

`prepare(name)` (`cbs prepare`) writes a dataset once as .npy files under
`<data folder>/prepared/` (harness.engine.records); from then on
`load_dataset(name)` opens those files without reading them, and the engine
streams them when they do not fit in device memory (harness.engine.stream).
`open_prepared(folder)` opens any prepared folder, e.g. one written by
`records.write_prepared` for a dataset of one's own.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pooch

from harness.engine import records
from harness.errors import UserError

# Shallue et al. (2019): the last 5,000 official training examples validate.
VALIDATION_SIZE = 5_000
# Tiny Shakespeare: the first 90% of the text trains, the rest validates.
TRAIN_FRACTION = 0.9
# tfds datasets without a validation split validate on the last 10% of train.
TFDS_FALLBACK_SPLITS = ("train[:90%]", "train[90%:]")

_MNIST = "https://storage.googleapis.com/cvdf-datasets/mnist/"
_FASHION = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_CIFAR10_ARCHIVE = "cifar10/cifar-10-binary.tar.gz"
_CIFAR10_BATCHES = tuple(f"cifar-10-batches-bin/data_batch_{i}.bin" for i in range(1, 6))

# Path in the data folder -> (official mirror, checksum in pooch's "alg:hex" form).
# SHA-256s of the files as distributed (../shared/data/SHA256SUMS; their MD5s
# match the ones the authors publish). CIFAR-10's authors publish only the
# MD5 of the archive, so the archive is what is checked, then unpacked.
FILES = {
    "mnist/train-images-idx3-ubyte.gz": (
        _MNIST + "train-images-idx3-ubyte.gz",
        "sha256:440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    ),
    "mnist/train-labels-idx1-ubyte.gz": (
        _MNIST + "train-labels-idx1-ubyte.gz",
        "sha256:3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    ),
    "fashion_mnist/train-images-idx3-ubyte.gz": (
        _FASHION + "train-images-idx3-ubyte.gz",
        "sha256:3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
    ),
    "fashion_mnist/train-labels-idx1-ubyte.gz": (
        _FASHION + "train-labels-idx1-ubyte.gz",
        "sha256:a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
    ),
    "tiny_shakespeare/input.txt": (
        "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        "sha256:86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
    ),
    _CIFAR10_ARCHIVE: (
        "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
        "md5:c32a1d4ab5d03f1284b67883e8d87530",
    ),
}

# The official files shipped with the package (harness/engine/datasets/<relpath>).
SHIPPED = Path(__file__).parent / "datasets"

# (path, size, mtime) of files whose checksum matched in this process.
_verified: set[tuple[str, int, int]] = set()


@dataclass(frozen=True)
class Dataset:
    """Train and validation arrays (read-only: they are shared by every trial
    of a process). Images are float32 in [0, 1] with shape (N, H, W, C);
    labels int32. Sequence data: x and y int32 of shape (N, T), y being x
    shifted by one character. `num_classes` is the label (or vocabulary) size;
    `vocabulary` is the characters of the token ids, in order (sequence data
    only). The arrays may also be `records.Column`s, rows on disk read when
    indexed (a prepared or tfds dataset)."""

    name: str
    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    num_classes: int
    vocabulary: str | None = None


# The seed of the permutation whose first N examples are a trial's `train_examples` subset.
SUBSET_SEED = 0


def train_subset(dataset: Dataset, examples: int | None) -> Dataset:
    """`dataset` with its training split cut to the first `examples` of a
    permutation seeded by SUBSET_SEED (None: unchanged), validation unchanged:
    every trial with the same N trains on the same examples, whatever its seed,
    and a smaller subset lies inside a larger one (Shallue et al. 2019 trained
    on MNIST subsets of 6,875 to 55,000 examples)."""
    if examples is None:
        return dataset
    size = len(dataset.train_x)
    if examples > size:
        raise UserError(
            f"train_examples {examples} exceeds the {size} training examples of {dataset.name}; allowed: 1 .. {size}"
        )
    keep = np.sort(np.random.default_rng(SUBSET_SEED).permutation(size)[:examples])
    if not isinstance(dataset.train_x, np.ndarray):  # on disk: the subset's rows are read when used
        x, y = records.split_of(dataset.train_x, dataset.train_y).subset(keep).columns()
        return dataclasses.replace(dataset, train_x=x, train_y=y)
    subset = [a[keep] for a in (dataset.train_x, dataset.train_y)]
    for array in subset:
        array.setflags(write=False)
    return dataclasses.replace(dataset, train_x=subset[0], train_y=subset[1])


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The data folder: `data_dir`, else $CBS_DATA_DIR, else the user cache."""
    chosen = data_dir or os.environ.get("CBS_DATA_DIR") or pooch.os_cache("cbs")
    return Path(chosen).expanduser().resolve()


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, **options) -> Dataset:
    """Load a dataset by name. Options: `seq_len` (tiny_shakespeare, default 64).
    Parsed arrays are cached per (name, data folder, options) in the process.
    A dataset prepared in the data folder (`prepare`) is opened from there."""
    data_dir = resolve_data_dir(data_dir)
    loader, options = _loader(name, options)
    prepared = prepared_dir(name, data_dir, **dict(options))
    if (prepared / "dataset.json").exists():
        return open_prepared(prepared)
    return _load(loader, name, data_dir, options)


def _loader(name: str, options: dict):
    """The loader of dataset `name` and its options with the defaults filled in."""
    if name.startswith("tfds:"):
        loader, defaults = _load_tfds, {}
    elif name in _LOADERS:
        loader, defaults = _LOADERS[name]
    else:
        raise UserError(f"unknown dataset {name!r}; allowed: {', '.join(_LOADERS)}, tfds:<name>")
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise UserError(
            f"dataset {name!r} has no option(s) {', '.join(unknown)}; allowed: {', '.join(defaults) or 'none'}"
        )
    return loader, tuple(sorted({**defaults, **options}.items()))


@functools.cache
def _load(loader, name: str, data_dir: Path, options: tuple) -> Dataset:
    dataset = loader(name, data_dir, **dict(options))
    for array in (dataset.train_x, dataset.train_y, dataset.val_x, dataset.val_y):
        if isinstance(array, np.ndarray):
            array.setflags(write=False)
    return dataset


def prepared_dir(name: str, data_dir: Path, **options) -> Path:
    """Where `prepare` writes dataset `name` with `options` (defaults filled in)."""
    suffix = "".join(f"-{k}={v}" for k, v in sorted(options.items()))
    return data_dir / "prepared" / (name.replace(":", "-") + suffix)


def prepare(name: str, data_dir: str | os.PathLike | None = None, out=None, **options) -> Path:
    """Write dataset `name` as a prepared folder (harness.engine.records): at
    `out`, else where load_dataset opens it, `<data folder>/prepared/<name>`.
    A tfds dataset is copied a block of rows at a time; returns the folder."""
    data_dir = resolve_data_dir(data_dir)
    loader, options = _loader(name, options)
    folder = Path(out) if out is not None else prepared_dir(name, data_dir, **dict(options))
    if (folder / "dataset.json").exists():
        raise UserError(f"{folder} already holds a prepared dataset; delete it to prepare {name} again")
    data = _load(loader, name, data_dir, options)
    splits = {"train": (data.train_x, data.train_y), "val": (data.val_x, data.val_y)}
    block = max(1, (64 << 20) // max(1, records.split_of(*splits["val"]).row_bytes))
    chunks = {split: records.chunks_of(x, y, block) for split, (x, y) in splits.items()}
    return records.write_prepared(folder, data.name, data.num_classes, chunks, data.vocabulary)


def open_prepared(folder) -> Dataset:
    """The Dataset of a prepared folder, its arrays on disk (records.Column)."""
    folder = Path(folder).resolve()
    if not (folder / "dataset.json").is_file():
        raise UserError(f"{folder} is not a prepared dataset (no dataset.json); write one with cbs prepare")
    return _open_prepared(folder)


@functools.cache
def _open_prepared(folder: Path) -> Dataset:
    meta = json.loads((folder / "dataset.json").read_text())
    train, val = (records.NpySplit(folder / f"{s}_x.npy", folder / f"{s}_y.npy").columns() for s in ("train", "val"))
    return Dataset(meta["name"], *train, *val, num_classes=meta["num_classes"], vocabulary=meta.get("vocabulary"))


def local_copy(relpath: str, data_dir: Path) -> Path:
    """Where `relpath` is read from without a download: the data folder's
    copy, else the one shipped with the package; the data folder's path (to
    download to) when neither exists."""
    path = data_dir / relpath
    return SHIPPED / relpath if not path.exists() and (SHIPPED / relpath).exists() else path


def fetch(relpath: str, data_dir: Path) -> Path:
    """The verified local copy of `relpath` (a key of FILES, local_copy), else
    downloaded from the official mirror into the data folder."""
    url, known_hash = FILES[relpath]
    path = local_copy(relpath, data_dir)
    where = f"the data folder is {data_dir} (choose it with --data-dir or the CBS_DATA_DIR environment variable)"
    alg, expected = known_hash.split(":")
    if not path.exists():
        try:
            pooch.retrieve(url, known_hash, fname=path.name, path=path.parent, progressbar=False)
        except (OSError, ValueError) as e:  # network failure, or a download that mismatches
            raise UserError(
                f"{relpath} is missing and its download from {url} failed ({type(e).__name__}): "
                f"put the official file ({alg} {expected}) at {path}; {where}"
            ) from None
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _verified:
        actual = pooch.file_hash(str(path), alg)
        if actual != expected:
            raise UserError(
                f"{path} is not the official {relpath}: its {alg} is {actual}, expected {expected}; "
                f"replace it with the official file or delete it to download it again; {where}"
            )
        _verified.add(key)
    return path


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file of unsigned bytes (LeCun et al.'s MNIST format): magic
    0x0000 0x08 ndim, then ndim big-endian int32 sizes, then the data."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    shape = np.frombuffer(raw, ">i4", count=raw[3], offset=4)
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * raw[3]).reshape(shape)


def _unit_interval(pixels: np.ndarray) -> np.ndarray:
    """uint8 pixels as float32 in [0, 1] (divided in place: 5x faster on MNIST)."""
    x = pixels.astype(np.float32)
    x /= 255
    return x


def _load_idx(name: str, data_dir: Path) -> Dataset:
    """MNIST / Fashion-MNIST: the first 55,000 training images train, the
    last 5,000 validate (Shallue et al. 2019); the test set is never read."""
    images = _read_idx(fetch(f"{name}/train-images-idx3-ubyte.gz", data_dir))
    labels = _read_idx(fetch(f"{name}/train-labels-idx1-ubyte.gz", data_dir)).astype(np.int32)
    x = _unit_interval(images[..., None])
    n = len(x) - VALIDATION_SIZE
    return Dataset(name, x[:n], labels[:n], x[n:], labels[n:], num_classes=10)


def _load_cifar10(name: str, data_dir: Path) -> Dataset:
    """CIFAR-10 from the official binary archive: data_batch_1..5 less their
    last 5,000 images train, those 5,000 validate; test_batch is never read."""
    archive = fetch(_CIFAR10_ARCHIVE, data_dir)
    pooch.Untar(members=list(_CIFAR10_BATCHES), extract_dir=".")(str(archive), "fetch", None)
    x, y = _read_cifar10_bin([archive.parent / batch for batch in _CIFAR10_BATCHES])
    n = len(x) - VALIDATION_SIZE
    return Dataset(name, x[:n], y[:n], x[n:], y[n:], num_classes=10)


def _read_cifar10_bin(paths) -> tuple[np.ndarray, np.ndarray]:
    """Records of CIFAR-10's binary format (Krizhevsky 2009): one label byte,
    then 3072 pixel bytes, the R, G and B planes of 32x32 in row-major order.
    Returns images (N, 32, 32, 3) float32 in [0, 1] and labels int32."""
    records = np.concatenate([np.fromfile(p, np.uint8).reshape(-1, 3073) for p in paths])
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return _unit_interval(images), records[:, 0].astype(np.int32)


def _load_shakespeare(name: str, data_dir: Path, seq_len: int) -> Dataset:
    """Tiny Shakespeare at the character level: the vocabulary is the sorted
    set of the file's characters; the first 90% of the text trains, the last
    10% validates, each cut into non-overlapping windows of seq_len + 1
    characters: x is a window's first seq_len, y its last seq_len."""
    if not (isinstance(seq_len, int) and seq_len >= 1):
        raise UserError(f"seq_len must be a positive integer, got {seq_len!r}")
    text = fetch("tiny_shakespeare/input.txt", data_dir).read_text(encoding="utf-8")
    codepoints = np.frombuffer(text.encode("utf-32-le"), np.uint32)
    vocabulary, ids = np.unique(codepoints, return_inverse=True)
    split = int(TRAIN_FRACTION * len(ids))

    def windows(part):
        n = len(part) // (seq_len + 1)
        w = part[: n * (seq_len + 1)].reshape(n, seq_len + 1).astype(np.int32)
        return w[:, :-1], w[:, 1:]

    (train_x, train_y), (val_x, val_y) = windows(ids[:split]), windows(ids[split:])
    return Dataset(
        name, train_x, train_y, val_x, val_y, num_classes=len(vocabulary), vocabulary="".join(map(chr, vocabulary))
    )


def _load_tfds(name: str, data_dir: Path) -> Dataset:
    """An image+label tensorflow-datasets dataset ('tfds:<name>'), prepared in
    `data_dir` as array_record and read through tfds's data sources, which
    need no TensorFlow, a row at a time (records.TfdsSplit). Validation is the 'validation' split, else the last
    10% of 'train'; the test split is never read (Shallue et al. 2019)."""
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise UserError(
            f"dataset {name!r} needs tensorflow-datasets: pip install 'critical-batch-size[tfds]'"
        ) from None
    tfds_name = name.removeprefix("tfds:")
    try:
        builder = tfds.builder(tfds_name, data_dir=str(data_dir), file_format="array_record")
        features = builder.info.features
        if not {"image", "label"} <= set(features):
            raise UserError(
                f"dataset {name!r} has features {', '.join(features)}; tfds datasets need 'image' and 'label'"
            )
        builder.download_and_prepare()
        splits = ("train", "validation") if "validation" in builder.info.splits else TFDS_FALLBACK_SPLITS
        train, val = (builder.as_data_source(split=s) for s in splits)
    except tfds.core.registered.DatasetNotFoundError:
        raise UserError(
            f"unknown tensorflow-datasets dataset {tfds_name!r}; see https://www.tensorflow.org/datasets/catalog"
        ) from None
    except (ImportError, NotImplementedError) as e:  # what the builder needs TensorFlow for
        reason = str(e).splitlines()[-1]
        raise UserError(
            f"dataset {name!r} needs TensorFlow to be built, prepared or read from {data_dir} "
            f"({reason}): pip install tensorflow"
        ) from None

    shape = features["image"].shape
    if None in shape:
        raise UserError(f"dataset {name!r} has images of varying shape {shape}; allowed: images of one shape")

    def columns(source):
        return records.TfdsSplit(source, shape, _unit_interval).columns()

    return Dataset(name, *columns(train), *columns(val), num_classes=features["label"].num_classes)


# name -> (loader, default options)
_LOADERS = {
    "mnist": (_load_idx, {}),
    "fashion_mnist": (_load_idx, {}),
    "tiny_shakespeare": (_load_shakespeare, {"seq_len": 64}),
    "cifar10": (_load_cifar10, {}),
}

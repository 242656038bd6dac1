"""Datasets read from disk a row at a time, for data larger than memory.

A `Split` is a random-access source of (x, y) examples: grain's
`RandomAccessDataSource` protocol (`__len__`, `__getitem__`) plus a batched
`read(keys)`, which returns the rows `keys` as two arrays. A `Dataset`
(harness.engine.data) whose arrays are `Column`s of splits holds no row in
memory: its arrays have a shape, a dtype and a length, and read their rows
when indexed (`np.asarray` reads them all, once per process). The engine
places such data in memory when it fits, else streams it
(harness.engine.stream).

On disk, a prepared dataset is a folder with `dataset.json` (name,
num_classes, vocabulary) and one NumPy `.npy` file per array (`train_x.npy`,
`train_y.npy`, `val_x.npy`, `val_y.npy`), readable by `np.load`.
`write_prepared` writes it from chunks, so no split is ever held in memory.
Rows are read with `os.preadv`, not through a memory map: a map's resident
pages count in the process's RSS (on Linux 6.x one read of 1,024 random rows
of a 600 MB map made 580 MB resident: the page cache's large folios are
mapped whole), while pread's stay in the page cache only.

`TfdsSplit` reads a tensorflow-datasets split through its data source
(`builder.as_data_source()`, ArrayRecord files with random access), an image
and its label at a time.
"""

from __future__ import annotations

import functools
import json
import mmap
import os
from pathlib import Path

import numpy as np

_NPY_HEADER = 256  # bytes: room for any shape, so the header is written before the row count is known
_READ_BLOCK = 64 << 20  # bytes a materializing read takes at a time


class Split:
    """(x, y) examples by index (subclasses: `read`, `__len__`, `specs`)."""

    specs: tuple  # ((row shape, dtype) of x, (row shape, dtype) of y)

    def __len__(self) -> int:
        raise NotImplementedError

    def read(self, keys) -> tuple[np.ndarray, np.ndarray]:
        """The examples `keys` (integers in [0, len)), stacked: (x, y)."""
        raise NotImplementedError

    def __getitem__(self, index: int):
        x, y = self.read(np.array([index]))
        return x[0], y[0]

    def columns(self) -> tuple[Column, Column]:
        return Column(self, 0), Column(self, 1)

    @property
    def row_bytes(self) -> int:
        return sum(int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize for shape, dtype in self.specs)

    @functools.cached_property
    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Every example in memory, read-only (read once per process)."""
        step = max(1, _READ_BLOCK // max(1, self.row_bytes))
        blocks = [self.read(np.arange(i, min(i + step, len(self)))) for i in range(0, len(self), step)]
        arrays = tuple(np.concatenate([b[j] for b in blocks]) for j in range(2))
        for a in arrays:
            a.setflags(write=False)
        return arrays

    def subset(self, keep: np.ndarray) -> Split:
        return SubsetSplit(self, keep)


class Column:
    """x or y of a Split as a read-only array: shape, dtype and length without
    reading; indexing reads the rows it names, `np.asarray` all of them."""

    def __init__(self, split: Split, which: int):
        self.split, self.which = split, which
        row, self.dtype = split.specs[which]
        self.dtype = np.dtype(self.dtype)
        self.shape = (len(split), *row)
        self.ndim = len(self.shape)
        self.nbytes = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index):
        rows, rest = (index[0], index[1:]) if isinstance(index, tuple) else (index, ())
        keys = np.arange(len(self))[rows]
        out = self.split.read(np.atleast_1d(keys))[self.which]
        return out[(slice(None), *rest)] if np.ndim(keys) else out[0][rest]

    def __getattr__(self, name):
        """The rest of ndarray's reading interface (min, max, astype, ...), on every row."""
        if name.startswith("_") or "split" not in self.__dict__:
            raise AttributeError(name)
        return getattr(np.asarray(self), name)

    def __array__(self, dtype=None, copy=None):
        array = self.split.arrays[self.which]
        return array if dtype is None else array.astype(dtype)

    def __repr__(self) -> str:
        return f"Column({type(self.split).__name__}, shape={self.shape}, dtype={self.dtype})"


def split_of(x, y) -> Split:
    """The Split that arrays x and y are the columns of (numpy arrays: an ArraySplit)."""
    if isinstance(x, Column) and isinstance(y, Column) and x.split is y.split:
        return x.split
    return ArraySplit(np.asarray(x), np.asarray(y))


class ArraySplit(Split):
    """A split of arrays in memory."""

    def __init__(self, x: np.ndarray, y: np.ndarray):
        self.x, self.y = x, y
        self.specs = ((x.shape[1:], x.dtype), (y.shape[1:], y.dtype))

    def __len__(self) -> int:
        return len(self.x)

    def read(self, keys):
        return self.x[keys], self.y[keys]


class SubsetSplit(Split):
    """The examples `keep` of another split, in that order."""

    def __init__(self, parent: Split, keep: np.ndarray):
        self.parent, self.keep, self.specs = parent, np.asarray(keep), parent.specs

    def __len__(self) -> int:
        return len(self.keep)

    def read(self, keys):
        return self.parent.read(self.keep[keys])


class NpyFile:
    """Rows of a .npy file (C order, no pickled objects), read by row index."""

    def __init__(self, path):
        self.path = str(path)
        with open(self.path, "rb") as f:
            major, _ = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(f)
            self.offset = f.tell()
        if fortran or dtype.hasobject:
            raise ValueError(f"{path}: rows need a C-ordered array of plain numbers")
        self.shape, self.dtype = shape, dtype
        self.row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        self._fd = None

    def __getstate__(self):
        return {**self.__dict__, "_fd": None}  # a file descriptor is this process's own

    def read(self, keys) -> np.ndarray:
        """The rows `keys`, copied out of a mapping of the file made for this
        read and closed after it: one gather instead of a read call per row
        (2.4x faster than os.preadv per row at 128 MNIST rows:
        benchmarks/RESULTS.md), and the mapped pages leave the process's
        resident set with the mapping, so streaming keeps a small RSS."""
        keys = np.asarray(keys, np.int64)
        bad = keys[(keys < 0) | (keys >= self.shape[0])]
        if bad.size:
            raise IndexError(f"row {bad[0]} of {self.path}, which has {self.shape[0]}")
        if not keys.size or not self.row_bytes:
            return np.empty((len(keys), *self.shape[1:]), self.dtype)
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        with mmap.mmap(self._fd, 0, access=mmap.ACCESS_READ) as mapped:
            rows = np.frombuffer(mapped, np.uint8, self.shape[0] * self.row_bytes, self.offset)
            out = rows.reshape(self.shape[0], self.row_bytes)[keys]
            del rows  # the mapping closes only once no array views it
        return out.view(self.dtype).reshape(len(keys), *self.shape[1:])

    def __del__(self):
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)


class NpySplit(Split):
    """A split of two .npy files with one row per example."""

    def __init__(self, x_path, y_path):
        self.x, self.y = NpyFile(x_path), NpyFile(y_path)
        if self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"{x_path} has {self.x.shape[0]} rows, {y_path} {self.y.shape[0]}")
        self.specs = ((self.x.shape[1:], self.x.dtype), (self.y.shape[1:], self.y.dtype))

    def __len__(self) -> int:
        return self.x.shape[0]

    def read(self, keys):
        return self.x.read(keys), self.y.read(keys)


class TfdsSplit(Split):
    """A tensorflow-datasets split through its random-access data source:
    `image` as float32 in [0, 1] (by `unit_interval`), `label` as int32."""

    def __init__(self, source, image_shape, unit_interval):
        self.source, self.unit_interval = source, unit_interval
        self.specs = ((tuple(image_shape), np.float32), ((), np.int32))
        # Batched reads (ArrayRecord's parallel ones) where the source has them; tfds.testing.mock_data's
        # sources answer only __getitem__ (their __getitems__ is set without `self`).
        try:
            self.batched = len(source) == 0 or len(source.__getitems__([0])) == 1
        except TypeError:
            self.batched = False

    def __len__(self) -> int:
        return len(self.source)

    def read(self, keys):
        keys = [int(k) for k in keys]
        examples = self.source.__getitems__(keys) if self.batched else [self.source[k] for k in keys]
        images = np.stack([e["image"] for e in examples]) if examples else np.zeros((0, *self.specs[0][0]), np.uint8)
        return self.unit_interval(images), np.array([e["label"] for e in examples], np.int32)


class NpyWriter:
    """A .npy file written a chunk of rows at a time (one dtype and row
    shape); its header, of fixed size, is written last, with the row count."""

    def __init__(self, path):
        self.path, self.count, self.first = Path(path), 0, None
        self.file = open(self.path, "wb")
        self.file.write(b"\0" * _NPY_HEADER)

    def append(self, chunk) -> None:
        chunk = np.ascontiguousarray(chunk)
        if self.first is None:
            self.first = chunk[:0]
        elif chunk.dtype != self.first.dtype or chunk.shape[1:] != self.first.shape[1:]:
            raise ValueError(
                f"{self.path}: a chunk of {chunk.dtype}{chunk.shape[1:]} after {self.first.dtype}{self.first.shape[1:]}"
            )
        self.file.write(chunk.tobytes())
        self.count += len(chunk)

    def close(self) -> tuple[int, ...]:
        """Write the header and close; returns the array's shape."""
        if self.first is None:
            raise ValueError(f"{self.path}: no rows")
        shape = (self.count, *self.first.shape[1:])
        header = {"descr": np.lib.format.dtype_to_descr(self.first.dtype), "fortran_order": False, "shape": shape}
        magic, text = b"\x93NUMPY\x01\x00", repr(header).encode("latin1")
        size = _NPY_HEADER - len(magic) - 2
        self.file.seek(0)
        self.file.write(magic + size.to_bytes(2, "little") + text.ljust(size - 1) + b"\n")
        self.file.close()
        return shape


def write_prepared(folder, name: str, num_classes: int, splits: dict, vocabulary: str | None = None) -> Path:
    """Write a prepared dataset: `splits` maps "train" and "val" to iterables
    of (x, y) chunks. The folder is written beside, then renamed into place,
    so a folder that exists is complete."""
    folder = Path(folder)
    partial = folder.with_name(folder.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):
        writers = NpyWriter(partial / f"{split}_x.npy"), NpyWriter(partial / f"{split}_y.npy")
        for pair in splits[split]:
            for writer, chunk in zip(writers, pair):
                writer.append(chunk)
        for writer in writers:
            writer.close()
    meta = {"name": name, "num_classes": int(num_classes), "vocabulary": vocabulary}
    (partial / "dataset.json").write_text(json.dumps(meta, indent=1) + "\n")
    os.replace(partial, folder)
    return folder


def chunks_of(x, y, rows: int = 16384):
    """(x, y) in chunks of `rows` examples: what write_prepared takes."""
    return ((x[i : i + rows], y[i : i + rows]) for i in range(0, len(x), rows))

"""Streamed input: training batches read from disk in the engine's data order
with grain (Google's data loader for JAX: deterministic random-access
datasets over any indexable source), for data larger than device memory.

A trial's data order does not depend on where the data live: step s draws
the examples `perm(e)[o : o + B]`, where (e, o) = Engine.position(s) and perm
is the (seed, epoch) permutation of harness.engine.step, computed by the same
compiled function on the device and copied to the host once per epoch, so a
streamed trial draws bit-identically the batches of an in-memory one.

The input pipeline is grain's `MapDataset.range(first, last)` over step
indices, mapped to each step's batch (`StepBatch`: its keys, read from the
`records.Split` in one batched read), read by index on the feed's own thread
(`Feed._source` says why not grain's read threads). The steps between two
evaluations are taken from it as one chunk [steps, replicas, microbatches, B', ...] (padded to a power of
two of steps, so uneven intervals share compiled loops), placed on the devices
sharded on the batch axis, and consumed by the compiled multi-step loop; the
chunk of the next evaluation interval is read and placed while the device
computes this one. A chunk holds at most CHUNK_BYTES: a longer interval runs
as several. The next step's position (Engine.data_state) is saved with each
checkpoint (harness.engine.resume): a resumed trial reads on from there.
"""

from __future__ import annotations

import functools
import math
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from harness.engine.records import Split, split_of

AUTO_FRACTION = 0.25  # "auto" keeps the data in memory when they take at most this fraction of the free memory
# The most one chunk of training batches takes (a larger step: one step a chunk). Small enough that
# malloc reuses a freed chunk's memory for the next (a new mapping costs a page fault per page: 1.4 ms a
# step at B = 128 with 128 MiB chunks, 0.7 ms with 16 MiB ones: benchmarks/RESULTS.md).
CHUNK_BYTES = 16 << 20
EVAL_BATCH = 1024
VALIDATION_BYTES = 256 << 20  # a validation set up to this size is placed once; a larger one is read per evaluation


def memory_budget() -> int:
    """Free bytes on the first local device (its allocator's limit less its
    use), else, where the device does not say (the CPU), the host's
    available memory (MemAvailable of /proc/meminfo)."""
    stats = jax.local_devices()[0].memory_stats() or {}
    if "bytes_limit" in stats:
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def data_bytes(data) -> int:
    return sum(int(a.nbytes) for a in (data.train_x, data.train_y, data.val_x, data.val_y))


def placement(choice: str, preferred: str, data, budget: int | None = None) -> str:
    """Where a trial's data live: `choice` (the trial's data_placement), else
    `preferred` (its workload's), else by size: "memory" when the data take
    at most AUTO_FRACTION of `budget` (default: memory_budget()), "stream"
    otherwise."""
    for chosen in (choice, preferred):
        if chosen != "auto":
            return chosen
    budget = memory_budget() if budget is None else budget
    return "memory" if data_bytes(data) <= AUTO_FRACTION * budget else "stream"


def feed_of(engine, permutation) -> Feed:
    """The Feed of a streamed harness.engine.step.Engine (its `train` is the
    training records.Split) whose epoch order is `permutation(epoch)`."""
    config, (r, k) = engine.config, (engine.config.replicas, engine.config.microbatches)
    sharding = NamedSharding(engine.mesh, P(None, None, None, "data"))
    steps, layout = (engine.start.step, config.max_steps), (r, k, config.batch_size // (r * k))
    return Feed(engine.train, config.batch_size, engine.position, permutation, *steps, layout, sharding)


class StepBatch:
    """grain's map from a step index to that step's examples (x, y)."""

    def __init__(self, split: Split, keys_of):
        self.split, self.keys_of = split, keys_of

    def __call__(self, step: int):
        return self.split.read(self.keys_of(step))


class Feed:
    """The training batches of steps [first, last) of one Engine, streamed:
    `chunks(start, stop)` yields (step, n, placed chunk) covering the steps
    start .. stop - 1 in order. `position(step)` is the engine's (epoch,
    offset); `order(epoch)` its permutation; `layout` the (replicas,
    microbatches, rows) of one step's batch; `sharding` the chunk's."""

    def __init__(self, split: Split, batch_size: int, position, order, first: int, last: int, layout, sharding):
        self.split, self.batch_size, self.position, self.first, self.last = split, batch_size, position, first, last
        self.layout, self.sharding = tuple(layout), sharding
        self.host_order = functools.lru_cache(maxsize=2)(lambda epoch: np.asarray(order(epoch)))
        self.step_bytes = batch_size * split.row_bytes
        self.max_steps = max(1, CHUNK_BYTES // self.step_bytes)
        self._dataset, self._pool, self._pending, self._lock = None, None, None, threading.Lock()

    def keys(self, step: int) -> np.ndarray:
        """The example indices that step `step` draws."""
        epoch, offset = self.position(step)
        return self.host_order(epoch)[offset : offset + self.batch_size]

    def pieces(self, start: int, stop: int) -> list[tuple[int, int]]:
        """[start, stop) as (step, n) chunks of near-equal size, each at most max_steps."""
        count = math.ceil((stop - start) / self.max_steps)
        bounds = [start + (stop - start) * i // count for i in range(count + 1)]
        return [(a, b - a) for a, b in zip(bounds, bounds[1:])]

    def chunks(self, start: int, stop: int):
        """The placed chunks of steps [start, stop); while the device computes
        one, the next is read and placed: the next piece of this interval, or
        the first of the next one, guessed to be as long as this one."""
        pieces = self.pieces(start, stop)
        after = min(stop + (stop - start), self.last)
        ahead = pieces[1:] + (self.pieces(stop, after)[:1] if after > stop else [])
        for (step, n), following in zip(pieces, [*ahead, None][: len(pieces)]):
            chunk = self._take(step, n)
            if following is not None:
                self._prefetch(*following)
            yield step, n, chunk

    # --- reading, one chunk at a time on a background thread -----------------
    def _source(self):
        """grain's random-access dataset of the step batches, read in order on
        the feed's one thread, a chunk ahead of the device. Not grain's
        IterDataset with read threads: on 2 CPU cores it and the stacking into
        a fresh chunk cost 1.1 ms a step at B = 16 and 2.5 ms at B = 128 on top
        of the reads themselves, and read by index on this thread 0.04 ms and
        0.26 ms (profile in benchmarks/RESULTS.md). Random access also makes a step's
        position (Engine.data_state, in the checkpoint) the whole iterator
        state."""
        if self._dataset is None:
            import grain  # imported here: in-memory trials need none of it

            self._dataset = grain.MapDataset.range(self.first, max(self.last, self.first + 1)).map(
                StepBatch(self.split, self.keys)
            )
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="cbs-feed")
        return self._dataset

    def _read(self, step: int, n: int):
        """Steps step .. step + n - 1, stacked into a chunk of chunk_rows(n) steps and placed."""
        dataset = self._source()
        batches = [dataset[s - self.first] for s in range(step, step + n)]
        rows = self.chunk_rows(n)
        shaped = []
        for j in range(2):
            first = batches[0][j]
            chunk = np.zeros((rows, *first.shape), first.dtype)
            np.stack([b[j] for b in batches], out=chunk[:n])
            shaped.append(chunk.reshape(rows, *self.layout, *first.shape[1:]))
        return jax.device_put(shaped, self.sharding)

    def chunk_rows(self, n: int) -> int:
        """The steps a chunk of n steps is padded to: the next power of two, at
        most max_steps. The compiled loop takes the chunk's shape, so the
        uneven intervals of a geometric evaluation schedule compile at most
        log2(max_steps) + 1 programs instead of one per interval length; the
        loop runs n steps and never reads the padding."""
        return min(1 << (n - 1).bit_length(), self.max_steps)

    def _wait(self) -> None:
        if self._pending is not None:
            self._pending[1].exception()  # a failed read is raised where its chunk is taken, or dropped
            self._pending = None

    def _prefetch(self, step: int, n: int) -> None:
        with self._lock:
            self._wait()
            self._source()
            self._pending = ((step, n), self._pool.submit(self._read, step, n))

    def _take(self, step: int, n: int):
        with self._lock:
            if self._pending is not None and self._pending[0] == (step, n):
                future: Future = self._pending[1]
                self._pending = None
                return future.result()
            self._wait()
            self._source()
            return self._pool.submit(self._read, step, n).result()


def train_split(data) -> Split:
    """The training split of a Dataset as a records.Split."""
    return split_of(data.train_x, data.train_y)


def validation(data, place):
    """The validation set for Engine.evaluate: `place(x, y)` (its placed
    chunks) when it takes at most VALIDATION_BYTES, else a ValidationGroups."""
    split = split_of(data.val_x, data.val_y)
    if len(split) * split.row_bytes <= VALIDATION_BYTES:
        return place(*split.arrays)
    return ValidationGroups(split, place)


class ValidationGroups:
    """A validation set too large to keep placed: read and placed a group of
    at most VALIDATION_BYTES at a time at each evaluation."""

    def __init__(self, split: Split, place):
        self.split, self.place = split, place
        self.rows = max(1, VALIDATION_BYTES // split.row_bytes)

    def __iter__(self):
        """(placed group, examples in it), in order."""
        for i in range(0, len(self.split), self.rows):
            keys = np.arange(i, min(i + self.rows, len(self.split)))
            yield self.place(*self.split.read(keys)), len(keys)


def eval_chunks(x, y, sharding):
    """The validation set as (chunks, EVAL_BATCH', ...) arrays plus weights that
    mask the padding, so every example counts exactly once."""
    size = min(EVAL_BATCH, len(x))
    n_devices = sharding.mesh.size
    size = -(-size // n_devices) * n_devices
    n = -(-len(x) // size)
    pad = n * size - len(x)

    def chunked(a):
        return np.concatenate([a, np.zeros((pad, *a.shape[1:]), a.dtype)]).reshape(n, size, *a.shape[1:])

    w = np.concatenate([np.ones(len(x), np.float32), np.zeros(pad, np.float32)])
    return jax.device_put((chunked(x), chunked(y), w.reshape(n, size)), sharding)

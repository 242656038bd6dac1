"""Leases: which worker runs a trial, safe across processes and machines.

A trial's folder holds its claims `claim.<n>`. A claim is created
exclusively (os.link fails if the name exists, also on NFS), renewed by a
heartbeat thread, and a dead worker's claim (lease expired, or its process
gone on this host) is taken over by exclusively creating the next generation
`claim.<n+1>`. Generations only grow while a trial is unfinished, so a late
taker can never create a name that already holds a live claim. Every file is
written atomically (`atomic_write`), so a crash leaves the old file or the
new one, never half of one.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

DEFAULT_LEASE_S = 60.0


def atomic_write(path: Path, text: str) -> None:
    """Write `text` to `path` so that a crash leaves either the old or the new
    file (temporary file in the same folder, fsync, rename, fsync the folder)."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:  # a full disk: say which file could not be written
        tmp.unlink(missing_ok=True)
        raise OSError(e.errno, e.strerror, str(path)) from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def try_claim(folder, worker: str, lease_s: float = DEFAULT_LEASE_S) -> Lease | None:
    """A lease on the trial whose folder is `folder`, or None while another live worker holds it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    generations = _generations(folder)
    if generations and _live(folder / f"claim.{generations[-1]}"):
        return None
    generation = generations[-1] + 1 if generations else 0
    lease = Lease(folder / f"claim.{generation}", worker, lease_s)
    return lease if lease.create() else None


def held(folder) -> bool:
    """Whether a live worker holds the trial whose folder is `folder` (reads only)."""
    generations = _generations(Path(folder))
    return bool(generations) and _live(Path(folder) / f"claim.{generations[-1]}")


def _generations(folder: Path) -> list[int]:
    return sorted(int(p.name.split(".")[1]) for p in folder.glob("claim.*") if p.name[6:].isdigit())


def _live(claim: Path) -> bool:
    """Whether the claim file `claim` is held (one that vanished is held: it is being replaced)."""
    try:
        return not _expired(json.loads(claim.read_text()))
    except FileNotFoundError:
        return True


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _expired(holder: dict) -> bool:
    """A claim is void once its lease ran out, or at once when its process is
    gone on this host (so re-running after a crash need not wait for the lease)."""
    if holder.get("expires", 0) < time.time():
        return True
    host, _, pid = holder.get("worker", "").rpartition(":")
    if host == socket.gethostname() and pid.isdigit():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
    return False


@dataclass
class Lease:
    """A claim on one trial, kept alive by a heartbeat thread while in use
    (`with lease: ...`). `lost` turns true when another worker took it over
    (this worker stalled past its lease): the holder must stop."""

    path: Path
    worker: str
    lease_s: float
    lost: bool = False

    def _content(self, expires: float) -> str:
        return json.dumps({"worker": self.worker, "expires": expires})

    def create(self) -> bool:
        tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_text(self._content(time.time() + self.lease_s))
        try:
            os.link(tmp, self.path)  # atomic and exclusive: EEXIST when another worker got there first
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink()

    def held(self) -> bool:
        """False once another worker has taken the trial over (one stat)."""
        if not self.lost:
            self.lost = self.path.with_name(f"claim.{int(self.path.name.split('.')[1]) + 1}").exists()
        return not self.lost

    def renew(self, expires: float | None = None) -> None:
        if not self.held():
            return
        atomic_write(self.path, self._content(time.time() + self.lease_s if expires is None else expires))

    def __enter__(self):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()
        return self

    def _beat(self):
        while not self._stop.wait(self.lease_s / 4):
            self.renew()

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        if not self.lost:
            self.renew(expires=0.0)  # released: the next claimer takes the next generation

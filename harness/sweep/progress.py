"""Sweep progress: trials done / total, best steps-to-target per batch size so
far, and an ETA. A live two-line display on a terminal; one plain line per
finished trial otherwise (logs, CI)."""
from __future__ import annotations

import shutil
import sys
import time

from harness.sweep.store import RecordIndex, Store


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


class Progress:
    """Watches the store while workers run; call `update()` periodically and
    `close()` at the end."""

    def __init__(self, folder, trial_ids, stream=None):
        self.index = RecordIndex(Store(folder))
        self.ids = list(trial_ids)
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.t0 = time.monotonic()
        self.index.refresh()
        self.seen = {i for i in self.ids if i in self.index.summaries}
        self.done_at_start = len(self.seen)
        self._lines = 0

    def update(self) -> None:
        self.index.refresh()
        new = [i for i in self.ids if i in self.index.summaries and i not in self.seen]
        if self.tty:
            self.seen.update(new)
            self._draw(self._status_lines())
            return
        for trial_id in new:
            self.seen.add(trial_id)
            s = self.index.summaries[trial_id]
            steps = f" at step {s.steps_to_target}" if s.steps_to_target is not None else ""
            print(f"[{len(self.seen)}/{len(self.ids)}] {trial_id} {s.status}{steps} after {s.steps_run} steps; "
                  f"{self._best_text()}; ETA {self._eta()}", file=self.stream, flush=True)

    def close(self) -> None:
        self.update()
        self._lines = 0

    def _eta(self) -> str:
        finished = len(self.seen) - self.done_at_start
        left = len(self.ids) - len(self.seen)
        if not left:
            return "done"
        if not finished:
            return "?"
        return _duration((time.monotonic() - self.t0) / finished * left)

    def _best_text(self) -> str:
        batch_sizes = sorted({self.index.summaries[i].batch_size for i in self.seen})
        best = {b: self.index.best_steps(b) for b in batch_sizes}
        return "best steps " + (" ".join(f"B={b}:{'-' if s is None else s}" for b, s in best.items()) or "-")

    def _status_lines(self) -> list[str]:
        width = shutil.get_terminal_size().columns
        done, total = len(self.seen), len(self.ids)
        bar_width = max(10, min(30, width - 60))
        filled = bar_width * done // max(total, 1)
        pruned = sum(self.index.summaries[i].status == "pruned" for i in self.seen)
        head = (f"[{'#' * filled}{'.' * (bar_width - filled)}] {done}/{total} trials, ETA {self._eta()} "
                f"({pruned} pruned, {_duration(time.monotonic() - self.t0)} elapsed)")
        return [head[:width - 1], self._best_text()[:width - 1]]

    def _draw(self, lines: list[str]) -> None:
        up = f"\x1b[{self._lines}F" if self._lines else ""
        self.stream.write(up + "".join(f"\x1b[2K{line}\n" for line in lines))
        self.stream.flush()
        self._lines = len(lines)

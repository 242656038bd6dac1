"""A trial's live log: each evaluation row appended to its measurements.csv as
it happens (flushed, so `tail -f` and pandas see it while the trial runs) and,
when the optional `tensorboard` extra (tensorboardX) is installed, to a
TensorBoard run with the trial's configuration as hparams.

The log is rewritten from the start each time a trial starts or resumes:
run_trial replays the rows restored from its checkpoint to `on_eval` first,
so no row appears twice.
"""

from __future__ import annotations

import csv
import importlib.util
import shutil
from pathlib import Path

COLUMNS = ("step", "examples", "train_loss", "val_loss", "val_metric", "wall_time")
GNS_COLUMNS = ("gns_g2", "gns_trace", "gns_b_simple")
SCALARS = {"train_loss": "train/loss", "val_loss": "val/loss", "val_metric": "val/metric"}


def tensorboard_available() -> bool:
    """Whether the `tensorboard` extra (tensorboardX) is installed: then every
    trial writes its TensorBoard run, with no option to set."""
    return importlib.util.find_spec("tensorboardX") is not None


class TrialLog:
    """`on_eval` for run_trial: appends each row to `csv_path` and, with
    `tensorboard_dir`, to a TensorBoard run there. Use as a context manager."""

    def __init__(self, config: dict, csv_path, tensorboard_dir=None):
        self.columns = COLUMNS + (GNS_COLUMNS if config.get("gns") else ()) + ("diverged_at",)
        Path(csv_path).parent.mkdir(parents=True, exist_ok=True)
        self._file = open(csv_path, "w", newline="")
        self._csv = csv.DictWriter(self._file, self.columns, restval="", extrasaction="ignore")
        self._csv.writeheader()
        self._writer = _tensorboard_run(config, tensorboard_dir) if tensorboard_dir else None

    def __call__(self, row: dict) -> None:
        self._csv.writerow({k: "" if v is None else v for k, v in row.items()})
        self._file.flush()
        if self._writer:
            for key, tag in SCALARS.items():
                if row.get(key) is not None:
                    self._writer.add_scalar(tag, row[key], row["step"])
            self._writer.flush()

    def close(self) -> None:
        self._file.close()
        if self._writer:
            self._writer.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def hparams(config: dict) -> dict:
    """The trial's configuration as TensorBoard hparams: every field with a
    plain value (None and empty fields left out, tuples as text)."""
    out = {}
    for key, value in config.items():
        if isinstance(value, (list, tuple)):
            value = ",".join(map(str, value)) if value else None
        if isinstance(value, (bool, int, float, str)):
            out[key] = value
    return out


def _tensorboard_run(config: dict, folder):
    """A fresh TensorBoard run in `folder` whose hparams are the trial's
    configuration and whose hparams metrics are the logged scalars."""
    from tensorboardX import SummaryWriter
    from tensorboardX.summary import hparams as hparams_summaries

    shutil.rmtree(folder, ignore_errors=True)
    writer = SummaryWriter(logdir=str(folder))
    for summary in hparams_summaries(hparams(config), {tag: 0.0 for tag in SCALARS.values()}):
        writer.file_writer.add_summary(summary)
    return writer

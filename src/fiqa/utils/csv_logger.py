"""Lightning's CSV logger, except that it appends to the run's ``metrics.csv`` instead of deleting it.

Lightning's writer removes an existing ``metrics.csv`` when it starts ("Previous log files in this
directory will be deleted"). A run resumed in its own dir (``ckpt_path=last``) would lose the log of
everything before the crash, and under ``trainer=ddp_sim`` the launcher process, which logs the final
metrics after the spawned ranks have finished, deleted the ranks' training log. Here a new writer reads
the existing header and appends; a row logged again after a resume (the steps between the checkpoint and
the crash) comes after the first one, so the last row of a step is the one that counts.
"""

from __future__ import annotations

import csv

from lightning.pytorch.loggers import CSVLogger as _CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment


class AppendingWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                header = next(csv.reader(f), [])
            self.metrics_keys = sorted(set(header))


class CSVLogger(_CSVLogger):
    """``lightning.pytorch.loggers.CSVLogger`` with :class:`AppendingWriter`."""

    @property
    @rank_zero_experiment
    def experiment(self) -> AppendingWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = AppendingWriter(log_dir=self.log_dir)
        return self._experiment

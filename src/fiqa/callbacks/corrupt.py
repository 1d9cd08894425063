"""Count the training records that ``data.skip_corrupt=true`` passed over, per epoch, on all ranks."""

from __future__ import annotations

import lightning as L
import torch

from fiqa.utils.logging import get_logger

log = get_logger(__name__)


class CorruptRecords(L.Callback):
    """Sums the ``skipped`` field of the training batches; at epoch end logs ``train/skipped_records``
    (summed over ranks) and warns with the count. Silent when nothing was skipped."""

    def __init__(self):
        self.epoch_count = 0
        self.total = 0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.epoch_count = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if isinstance(batch, dict) and "skipped" in batch:
            self.epoch_count += int(batch["skipped"].sum())

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        count = torch.tensor(float(self.epoch_count), device=pl_module.device)
        count = int(trainer.strategy.reduce(count, reduce_op="sum").item())
        self.total += count
        if count:
            pl_module.log("train/skipped_records", float(count), rank_zero_only=True, sync_dist=False)
            log.warning(
                f"epoch {trainer.current_epoch}: data.skip_corrupt skipped {count} unreadable training "
                f"records ({self.total} so far); the warnings above name them"
            )

    def state_dict(self) -> dict:
        return {"total": self.total}

    def load_state_dict(self, state_dict: dict) -> None:
        self.total = int(state_dict.get("total", 0))

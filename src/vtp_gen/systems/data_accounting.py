"""The data account of a training system: counted per batch, logged, checkpointed per rank, reported at the end."""

from __future__ import annotations

from vtp_gen.data.accounting import DataAccount
from vtp_gen.utils.log import step_logger

log = step_logger("stage1")


class AccountsForData:
    """Mixin for the stage-1 LightningModules (pre-training and decoder fine-tune).

    The system calls :meth:`count_data` on each batch and logs
    :meth:`data_log_values`; the hooks below keep every rank's count in the
    checkpoint (both hooks run on every rank, so the gather is safe) and, when
    training ends, sum the ranks, print the account and keep it in
    ``data_totals`` for the run report.
    """

    data_phase = "training"

    def init_data_account(self) -> None:
        self.data_account = DataAccount()
        self.data_totals: dict | None = None

    def count_data(self, batch: dict) -> None:
        self.data_account.count(batch)

    def data_log_values(self) -> dict[str, float]:
        return self.data_account.log_values()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["data_issues"] = self.data_account.checkpoint_state()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.data_account.restore(checkpoint.get("data_issues", {}))

    def final_data_account(self) -> dict:
        """The account summed over ranks, after ``fit`` (a collective: every rank calls it).

        ``on_train_end`` leaves it in ``data_totals``; a rerun whose checkpoint is
        already at the last step skips the training loop, hook included, so the
        restored account is summed here instead.
        """
        if self.data_totals is None:
            self.data_totals = self.data_account.total().as_dict()
        return self.data_totals

    def on_train_end(self) -> None:
        total = self.data_account.total()
        self.data_totals = total.as_dict()
        if self.trainer.is_global_zero:
            log.info(f"{self.data_phase} data: {total.summary()}")

"""A training run's data account: every sample the loader handed over is either used or counted as skipped.

Per batch, the loader reports ``batch["samples_drawn"]`` (items it handed
over, good or not), ``batch["samples_used"]`` (the usable ones among them) and
``batch["data_issues"]`` (kind -> count, see :mod:`vtp_gen.data.decode`).
Kinds fall in three groups:

- skipped (the sample was unusable and left out: truncated, empty, not an image, ...),
- repaired (the sample was used after a fix: CMYK or 16-bit converted, caption not UTF-8, ...),
- ``refilled_duplicate``: batch slots that stage 1 filled with repeats of good
  samples of the same batch, so every rank's batch keeps its size.

Drawn, used and skipped are counted separately, so ``drawn == used +
skipped`` is a check, not a definition: anything else is reported as
``unaccounted`` (a sample lost without being counted). Each rank counts its own batches; checkpoints keep every rank's count
and :meth:`DataAccount.total` sums them.
"""

from __future__ import annotations

from collections import Counter

import torch.distributed as dist

from vtp_gen.data.decode import (
    BAD_JSON,
    BAD_LABEL,
    BAD_TAR_MEMBER,
    EMPTY_CAPTION,
    EMPTY_FILE,
    MISSING_IMAGE,
    NOT_AN_IMAGE,
    TOO_LARGE,
    TRUNCATED_IMAGE,
    UNREADABLE_FILE,
)
from vtp_gen.utils.distributed import get_rank, get_world_size, is_distributed

SKIP_KINDS = frozenset(
    {
        EMPTY_FILE,
        NOT_AN_IMAGE,
        TRUNCATED_IMAGE,
        TOO_LARGE,
        BAD_TAR_MEMBER,
        MISSING_IMAGE,
        EMPTY_CAPTION,
        UNREADABLE_FILE,
        BAD_JSON,
        BAD_LABEL,
    }
)
REFILLED = "refilled_duplicate"
DRAWN = "drawn"
USED = "used"


class DataAccount:
    """Running totals of one rank: samples drawn, and data issues by kind."""

    def __init__(self, totals: dict[str, int] | None = None) -> None:
        self.totals: Counter[str] = Counter(totals or {})

    # ----------------------------------------------------------------- counting
    def count(self, batch: dict) -> None:
        self.totals.update(batch.get("data_issues", {}))
        for key, name in (("samples_drawn", DRAWN), ("samples_used", USED)):
            if key in batch:
                self.totals[name] += int(batch[key])

    @property
    def drawn(self) -> int:
        return self.totals[DRAWN]

    @property
    def skipped(self) -> dict[str, int]:
        return {k: n for k, n in sorted(self.totals.items()) if k in SKIP_KINDS}

    @property
    def repaired(self) -> dict[str, int]:
        return {
            k: n
            for k, n in sorted(self.totals.items())
            if k not in SKIP_KINDS and k not in (DRAWN, USED, REFILLED)
        }

    @property
    def used(self) -> int:
        return self.totals[USED]

    @property
    def unaccounted(self) -> int:
        """Drawn but neither used nor counted as skipped: 0 unless something dropped samples silently."""
        return self.drawn - self.used - sum(self.skipped.values())

    @property
    def refilled(self) -> int:
        return self.totals[REFILLED]

    # ----------------------------------------------------------------- reporting
    def log_values(self) -> dict[str, float]:
        """Flat metrics for the logger: data/drawn, data/used, data/skipped/<kind>, data/repaired/<kind>, data/refilled."""
        values = {"data/drawn": float(self.drawn), "data/used": float(self.used)}
        values.update({f"data/skipped/{k}": float(n) for k, n in self.skipped.items()})
        values.update({f"data/repaired/{k}": float(n) for k, n in self.repaired.items()})
        if self.refilled:
            values["data/refilled"] = float(self.refilled)
        if self.unaccounted:
            values["data/unaccounted"] = float(self.unaccounted)
        return values

    def as_dict(self) -> dict:
        return {
            "drawn": self.drawn,
            "used": self.used,
            "skipped": self.skipped,
            "repaired": self.repaired,
            "refilled_with_repeats": self.refilled,
            "unaccounted": self.unaccounted,
        }

    def summary(self) -> str:
        def kinds(counts: dict[str, int]) -> str:
            return f" ({', '.join(f'{k} {n}' for k, n in counts.items())})" if counts else ""

        text = (
            f"{self.drawn} samples drawn: {self.used} used, {sum(self.repaired.values())} of them repaired"
            f"{kinds(self.repaired)}; {sum(self.skipped.values())} skipped{kinds(self.skipped)}"
        )
        if self.refilled:
            text += f"; {self.refilled} batch slots refilled with repeats of good samples"
        if self.unaccounted:
            text += (
                f"; {self.unaccounted} UNACCOUNTED (drawn but neither used nor counted: a bug, please report)"
            )
        return text

    # ----------------------------------------------------------------- ranks and checkpoints
    def total(self) -> DataAccount:
        """The sum over all ranks (a collective: every rank must call it)."""
        return DataAccount(sum((Counter(t) for t in _gather(dict(self.totals))), Counter()))

    def checkpoint_state(self) -> dict:
        """Every rank's totals (a collective), so a resumed run gives each rank back its own count."""
        return {"by_rank": _gather(dict(self.totals))}

    def restore(self, state: dict) -> None:
        """From :meth:`checkpoint_state`; with another number of ranks, rank 0 takes over the whole count."""
        by_rank = state.get("by_rank", [state] if state else [])
        rank, world_size = get_rank(), get_world_size()
        if len(by_rank) == world_size:
            self.totals = Counter(by_rank[rank])
        else:
            self.totals = sum((Counter(t) for t in by_rank), Counter()) if rank == 0 else Counter()


def _gather(totals: dict[str, int]) -> list[dict[str, int]]:
    if not is_distributed():
        return [totals]
    gathered: list = [None] * get_world_size()
    dist.all_gather_object(gathered, totals)
    return gathered

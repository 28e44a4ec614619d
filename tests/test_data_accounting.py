"""The data account: drawn = used + skipped is checked, repairs and refills are kept apart, ranks add up."""

import pytest
import torch

from vtp_gen.data.accounting import REFILLED, DataAccount
from vtp_gen.utils.distributed import run_on_gloo_ranks

pytestmark = pytest.mark.faults("bad input")


def batch(drawn: int, used: int, **issues: int) -> dict:
    return {"samples_drawn": drawn, "samples_used": used, "data_issues": issues}


def test_the_account_separates_skipped_repaired_and_refilled():
    account = DataAccount()
    account.count(batch(8, 6, truncated_image=1, empty_caption=1, converted_cmyk=2, **{REFILLED: 2}))
    account.count(batch(8, 8, caption_not_utf8=1))
    assert account.as_dict() == {
        "drawn": 16,
        "used": 14,
        "skipped": {"empty_caption": 1, "truncated_image": 1},
        "repaired": {"caption_not_utf8": 1, "converted_cmyk": 2},
        "refilled_with_repeats": 2,
        "unaccounted": 0,
    }
    assert account.log_values()["data/skipped/truncated_image"] == 1.0
    assert "data/unaccounted" not in account.log_values()
    assert account.summary().startswith("16 samples drawn: 14 used, 3 of them repaired")


def test_a_silently_dropped_sample_shows_as_unaccounted():
    account = DataAccount()
    account.count(batch(8, 6, truncated_image=1))  # one sample neither used nor counted
    assert account.unaccounted == 1
    assert account.log_values()["data/unaccounted"] == 1.0
    assert "1 UNACCOUNTED" in account.summary()


def test_restore_without_a_process_group_takes_every_rank_s_count():
    state = {"by_rank": [{"drawn": 8, "used": 8}, {"drawn": 8, "used": 7, "not_an_image": 1}]}
    account = DataAccount()
    account.restore(state)  # one process resuming a 2-rank run: rank 0 carries the whole count
    assert (account.drawn, account.used, account.skipped) == (16, 15, {"not_an_image": 1})
    legacy = DataAccount()
    legacy.restore({"truncated_image": 3})  # checkpoints from before the per-rank format
    assert legacy.skipped == {"truncated_image": 3}


def _two_ranks(rank: int, world_size: int) -> dict[str, torch.Tensor]:
    account = DataAccount()
    account.count(batch(8, 8 - rank, **({"truncated_image": rank} if rank else {})))
    state = account.checkpoint_state()
    total = account.total()
    resumed = DataAccount()
    resumed.restore(state)
    return {
        "total": torch.tensor([total.drawn, total.used, total.skipped.get("truncated_image", 0)]),
        "own_after_restore": torch.tensor([resumed.drawn, resumed.used]),
    }


def test_two_ranks_sum_and_each_gets_its_own_count_back():
    results = run_on_gloo_ranks(_two_ranks, world_size=2)
    for rank, out in enumerate(results):
        assert out["total"].tolist() == [16, 15, 1]
        assert out["own_after_restore"].tolist() == [8, 8 - rank]

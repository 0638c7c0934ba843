"""segmentation_suite.network.host.AggregationRound without sockets: when a round closes.

`take` never closes a round, so a caller can report a push before the round it completes
closes (tests/api/test_api_mixed_rooms.py checks that order on a real relay); `add` is
`take` then `close_if_complete`. Expected means are computed here from the inputs.
"""

from __future__ import annotations

import numpy as np
import pytest

from segmentation_suite.network.host import AggregationRound


def state(value: float) -> dict:
    return {"w": np.full(3, value, dtype=np.float32)}


@pytest.fixture
def closed():
    """The rounds an AggregationRound closed: (weights, round number, contributors)."""
    return []


def make_round(closed, members=("a", "b")) -> AggregationRound:
    aggregation = AggregationRound(lambda *args: closed.append(args), timeout=3600)
    aggregation.set_members(members)
    return aggregation


def test_take_never_closes_a_complete_round_close_if_complete_does(closed):
    aggregation = make_round(closed)
    aggregation.take("a", state(1.0), 1)
    assert not aggregation.close_if_complete()  # b has not pushed
    aggregation.take("b", state(4.0), 2)
    assert closed == []  # complete, and still open: the caller reports b's push first
    assert aggregation.pending_contributors == ("a", "b")
    assert aggregation.close_if_complete()
    ((weights, number, contributors),) = closed
    assert number == 1 and contributors == ["a", "b"]
    np.testing.assert_allclose(weights["w"], np.full(3, (1.0 * 1 + 4.0 * 2) / 3))
    assert not aggregation.close_if_complete()  # the next round has no push yet
    assert len(closed) == 1


def test_add_is_take_then_close_if_complete(closed):
    aggregation = make_round(closed)
    aggregation.add("a", state(2.0), 1)
    assert closed == []
    aggregation.add("b", state(6.0), 1)
    ((weights, number, contributors),) = closed
    assert number == 1 and contributors == ["a", "b"]
    np.testing.assert_allclose(weights["w"], np.full(3, 4.0))


def test_a_second_take_of_one_member_changes_nothing(closed):
    aggregation = make_round(closed)
    aggregation.take("a", state(1.0), 1)
    with pytest.raises(ValueError, match="already contributed"):
        aggregation.take("a", state(9.0), 1)
    assert aggregation.pending_contributors == ("a",)
    assert not aggregation.close_if_complete() and closed == []


def test_a_member_leaving_closes_a_round_the_others_completed(closed):
    aggregation = make_round(closed, members=("a", "b", "c"))
    aggregation.take("a", state(1.0), 1)
    aggregation.take("b", state(3.0), 1)
    assert not aggregation.close_if_complete()
    aggregation.set_members(["a", "b"])  # c left
    ((weights, _, contributors),) = closed
    assert contributors == ["a", "b"]
    np.testing.assert_allclose(weights["w"], np.full(3, 2.0))

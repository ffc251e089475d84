"""The coordinator's asks for replies: quiet while no site can have replied, quick after."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from flwr.app import Message

from fedlora.config import RunConfig
from fedlora.protocol import make_reply, read_instruction
from fedlora.server.federation import run_federation
from fedlora.server.reply_polls import (
    FAST_POLL_S,
    LONGEST_QUIET_WAIT_S,
    QUIET_SHARE,
    UNTIMED_POLL_CAP_S,
    ReplyPolls,
)


def test_without_an_earlier_exchange_it_asks_soon_then_at_most_every_untimed_cap() -> None:
    polls = ReplyPolls(None)

    waits = [polls.next_wait(t) for t in (0.0, 0.03, 0.09, 0.19, 5.0)]
    polls.replied()

    assert waits == [FAST_POLL_S, 2 * FAST_POLL_S, UNTIMED_POLL_CAP_S, UNTIMED_POLL_CAP_S, 0.1]
    assert polls.next_wait(5.1) == FAST_POLL_S  # a reply came: the others are near


def test_it_stays_quiet_until_a_share_of_the_fastest_exchange_has_passed() -> None:
    polls = ReplyPolls(1.0)

    waits, elapsed = [], 0.0
    while (wait := polls.next_wait(elapsed)) != FAST_POLL_S:
        waits.append(wait)
        elapsed += wait

    assert elapsed == pytest.approx(QUIET_SHARE * 1.0)
    assert all(0 < wait <= LONGEST_QUIET_WAIT_S for wait in waits)
    assert len(waits) == 2  # 0.5 s, then the 0.2 s left: two asks instead of about twenty


def test_a_reply_during_the_quiet_time_makes_it_ask_quickly() -> None:
    polls = ReplyPolls(2.0)
    assert polls.next_wait(0.1) == LONGEST_QUIET_WAIT_S

    polls.replied()

    assert polls.next_wait(0.2) == FAST_POLL_S


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_an_impossible_duration_is_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="must be >= 0 s"):
        ReplyPolls(bad)


class _TimedSitesGrid:
    """Sites that answer a train message ``train_s`` after it was pushed, an evaluation at once.

    Each site sends back the adapter it received (a valid, unchanged update); every pull is
    recorded with the time since its exchange's messages were pushed.
    """

    def __init__(self, nodes: list[int], train_s: float) -> None:
        self.nodes, self.train_s = nodes, train_s
        self.due: dict[str, tuple[Message, float]] = {}
        self.pushed_at = 0.0
        self.pulls: list[list[float]] = []
        """Per exchange, the times of its pulls."""

    def get_node_ids(self) -> list[int]:
        return self.nodes

    def push_messages(self, messages: list[Message]) -> list[str]:
        self.pushed_at = time.monotonic()
        self.pulls.append([])
        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = message.object_id  # as Flower's grids do
            wait = self.train_s if message.metadata.message_type == "train" else 0.0
            self.due[message.object_id] = (message, self.pushed_at + wait)
            ids.append(message.object_id)
        return ids

    def pull_messages(self, message_ids: set[str]) -> list[Message]:
        now = time.monotonic()
        self.pulls[-1].append(now - self.pushed_at)
        ready = [mid for mid in message_ids if self.due[mid][1] <= now]
        return [self._reply(self.due.pop(mid)[0]) for mid in ready]

    @staticmethod
    def _reply(message: Message) -> Message:
        instruction = read_instruction(message)
        site = f"site-{message.metadata.dst_node_id}"
        evaluation = {"num-examples": 4.0, "loss": 1.0}
        if message.metadata.message_type == "evaluate":
            return Message(make_reply(site, evaluation), reply_to=message)
        carried = evaluation if instruction.evaluate_received else None
        content = make_reply(site, {"num-examples": 8.0}, instruction.adapter, None, carried)
        return Message(content, reply_to=message)


def test_the_coordinator_asks_less_once_it_knows_how_long_training_takes(
    tmp_path: Path, flower_identity: None
) -> None:
    train_s = 0.6
    grid = _TimedSitesGrid([1, 2], train_s)
    config = RunConfig(sites=2, rounds=3, dp=False, max_length=32, out=str(tmp_path))

    federation = run_federation(grid, config, out=tmp_path, run_id="polls")  # type: ignore[arg-type]

    assert json.loads((tmp_path / "polls" / "status.json").read_text())["state"] == "complete"
    first_train, *later_trains = grid.pulls[1:4]  # exchanges: eval 0, train 1..3, eval 3
    quiet = QUIET_SHARE * train_s
    # no estimate yet: asks soon, then every 0.1 s (at 0.03, 0.09, 0.19, 0.29, 0.39 s)
    assert sum(t < quiet for t in first_train) >= 4
    assert len(first_train) <= 10  # not every 0.03 s (about 20 asks)
    for pulls in later_trains:
        assert sum(t < quiet - 0.05 for t in pulls) <= 1  # one 0.5 s quiet piece at most
        assert max(pulls) >= train_s  # and it still asked until the replies were there
    assert federation.fastest_train_s is not None and federation.fastest_train_s >= train_s
    assert len(grid.pulls[4]) <= 3  # the last evaluation is asked for quickly

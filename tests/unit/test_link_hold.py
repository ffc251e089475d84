"""Held pulls on the SuperLink: an empty pull waits for the next stored message."""

from __future__ import annotations

import logging
import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest

from fedlora.deploy import commands as deploy
from fedlora.errors import ConfigError
from fedlora.flower_internals.link_hold import (
    OBJECTS,
    MessageSignal,
    PullHold,
    check_hold,
    hold_pulls,
    notify_on_stores,
)
from fedlora.flower_internals.link_superlink import _parse
from fedlora.flower_internals.tuning import HELD_PULL_S, SupernodeWaits
from tests.flower_messages import train_instruction

NODE = 7


class _Inbox:
    """What a pull finds: empty until something is put in."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self.asks = 0

    def ask(self) -> list[str]:
        self.asks += 1
        return list(self.items)


def _found(answer: list[str]) -> bool:
    return bool(answer)


def test_a_pull_that_finds_something_is_answered_at_once() -> None:
    inbox = _Inbox()
    inbox.items.append("message")
    hold = PullHold(MessageSignal(), hold_s=5.0)

    assert hold.pull(inbox.ask, _found, waits_for=NODE) == ["message"]
    assert inbox.asks == 1


def test_an_empty_pull_is_answered_when_a_message_is_stored() -> None:
    signal = MessageSignal()
    inbox = _Inbox()
    hold = PullHold(signal, hold_s=10.0, recheck_s=10.0)  # only the wake-up can end it early

    def store_later() -> None:
        time.sleep(0.2)
        inbox.items.append("message")
        signal.notify(NODE)

    threading.Thread(target=store_later).start()
    started = time.monotonic()
    answer = hold.pull(inbox.ask, _found, waits_for=NODE)

    assert answer == ["message"]
    assert time.monotonic() - started < 10.0  # woken, not at the end of the hold
    assert inbox.asks == 2  # asked once more, after the wake-up


def test_a_message_stored_between_the_ask_and_the_wait_is_not_missed() -> None:
    signal = MessageSignal()
    inbox = _Inbox()

    def ask_then_store() -> list[str]:
        answer = inbox.ask()
        if inbox.asks == 1:  # stored after the first look, before the hold waits
            inbox.items.append("message")
            signal.notify(NODE)
        return answer

    hold = PullHold(signal, hold_s=10.0, recheck_s=10.0)
    started = time.monotonic()

    assert hold.pull(ask_then_store, _found, waits_for=NODE) == ["message"]
    assert time.monotonic() - started < 10.0


def test_a_hold_ends_with_the_empty_answer_when_nothing_comes() -> None:
    inbox = _Inbox()
    hold = PullHold(MessageSignal(), hold_s=0.3, recheck_s=0.1)  # RECHECK_S is longer
    started = time.monotonic()

    assert hold.pull(inbox.ask, _found, waits_for=NODE) == []
    assert time.monotonic() - started >= 0.3
    assert 2 <= inbox.asks <= 5  # it looked again every recheck_s (0.1 s) meanwhile


def test_a_held_pull_finds_a_message_stored_without_a_wake_up() -> None:
    inbox = _Inbox()
    hold = PullHold(MessageSignal(), hold_s=10.0, recheck_s=0.05)
    threading.Timer(0.2, inbox.items.append, args=("message",)).start()
    started = time.monotonic()

    assert hold.pull(inbox.ask, _found, waits_for=NODE) == ["message"]
    assert time.monotonic() - started < 10.0


def test_a_store_for_another_node_does_not_make_a_held_pull_ask_again() -> None:
    signal = MessageSignal()
    inbox = _Inbox()
    hold = PullHold(signal, hold_s=0.5, recheck_s=10.0)
    threading.Timer(0.1, signal.notify, args=(NODE + 1,)).start()  # another site's message
    threading.Timer(0.2, signal.notify, args=(OBJECTS,)).start()  # an object's content

    assert hold.pull(inbox.ask, _found, waits_for=NODE) == []
    # asked at the start and once more as the hold ran out: neither store woke it to pull
    assert inbox.asks == 2


def test_a_found_message_is_answered_once_its_objects_are_stored() -> None:
    signal = MessageSignal()
    inbox = _Inbox()
    inbox.items.append("message")
    objects: list[str] = []
    hold = PullHold(signal, hold_s=10.0, recheck_s=10.0)

    def store_objects() -> None:
        for name in ("record", "record-dict", "message"):
            time.sleep(0.05)
            objects.append(name)
            signal.notify(OBJECTS)

    threading.Thread(target=store_objects).start()
    answer = hold.pull(inbox.ask, _found, waits_for=NODE, ready=lambda _: len(objects) == 3)

    assert answer == ["message"] and len(objects) == 3
    assert inbox.asks == 1  # found at once; only its objects were waited for


def test_only_max_held_pulls_wait_the_others_are_answered_at_once() -> None:
    signal = MessageSignal()
    inbox = _Inbox()
    hold = PullHold(signal, hold_s=10.0, recheck_s=10.0, max_held=1)
    first: list[list[str]] = []
    held = threading.Thread(
        target=lambda: first.append(hold.pull(inbox.ask, _found, waits_for=NODE))
    )
    held.start()
    while inbox.asks == 0:
        time.sleep(0.01)
    time.sleep(0.05)

    assert (
        hold.pull(inbox.ask, _found, waits_for=NODE) == []
    )  # the only slot is taken: Flower's answer
    inbox.items.append("message")
    signal.notify(NODE)
    held.join(5.0)
    assert first == [["message"]]
    assert hold.pull(inbox.ask, _found, waits_for=NODE) == ["message"]  # the slot was given back


def test_no_hold_is_flowers_immediate_answer() -> None:
    inbox = _Inbox()

    assert PullHold(MessageSignal(), hold_s=0).pull(inbox.ask, _found, waits_for=NODE) == []
    assert inbox.asks == 1


@pytest.mark.parametrize("seconds", [-1.0, 10.5, float("nan"), float("inf")])
def test_bad_holds_are_refused(seconds: float) -> None:
    with pytest.raises(ConfigError, match="pull hold must be between 0 and 10"):
        check_hold(seconds)
    with pytest.raises(ConfigError, match="pull hold"):
        PullHold(MessageSignal(), hold_s=seconds)


def test_bad_slot_counts_are_refused() -> None:
    with pytest.raises(ConfigError, match="at least 1"):
        PullHold(MessageSignal(), max_held=0)


class _State:
    """Stands in for a LinkState: stores succeed or fail as told."""

    def __init__(self, outcomes: list[bool]) -> None:
        self.outcomes = outcomes

    def store_message_and_object_tree(
        self, message: Any, object_tree: Any, session_id: str
    ) -> tuple[bool, list[str]]:
        return self.outcomes.pop(0), []


def test_a_stored_message_notifies_and_a_refused_one_does_not() -> None:
    state_class = type("State", (_State,), {})
    signal = MessageSignal()
    assert notify_on_stores(signal, [state_class], []) is True
    assert notify_on_stores(signal, [state_class], []) is True  # a second call: one wrapper
    state = state_class([False, True])

    message = SimpleNamespace(metadata=SimpleNamespace(dst_node_id=NODE))

    assert state.store_message_and_object_tree(message, "tree", "s") == (False, [])
    assert signal.count(NODE) == 0
    assert state.store_message_and_object_tree(message, "tree", "s") == (True, [])
    assert signal.count(NODE) == 1  # for the message's destination node
    assert signal.count(NODE + 1) == 0


def _handlers(fleet_pull: Any, runtime_pull: Any) -> tuple[SimpleNamespace, SimpleNamespace]:
    return SimpleNamespace(pull_messages=fleet_pull), SimpleNamespace(pull_messages=runtime_pull)


def _held_flower_superlink(
    monkeypatch: pytest.MonkeyPatch, database: str
) -> tuple[Any, Any, Any, int, int]:
    """Flower's own LinkState and pull handlers, held: one active node, one run.

    ``database`` is Flower's ``--database``: ``:flwr-in-memory:`` or a SQLite file.
    """
    from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState
    from flwr.server.superlink.linkstate.sql_linkstate import SqlLinkState
    from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME, NOOP_FEDERATION_ID, TaskType
    from flwr.supercore.object_store import ObjectStoreFactory
    from flwr.superlink.federation.noop_federation_manager import NoOpFederationManager
    from flwr.superlink.servicer.fleet import fleet_handlers
    from flwr.superlink.servicer.runtime import runtime_handlers

    state_classes = [InMemoryLinkState, SqlLinkState]
    store_classes = _store_classes()
    # restored after the test: the wrappers are set on Flower's classes themselves
    for cls in state_classes:
        monkeypatch.setattr(cls, "store_message_and_object_tree", cls.store_message_and_object_tree)
    for cls in store_classes:
        monkeypatch.setattr(cls, "put", cls.put)
    fleet, runtime = _handlers(fleet_handlers.pull_messages, runtime_handlers.pull_messages)
    hold = PullHold(MessageSignal(), hold_s=10.0, recheck_s=10.0)  # only stores end it early
    assert hold_pulls(
        hold, fleet=fleet, runtime=runtime, state_classes=state_classes, store_classes=store_classes
    )
    store = ObjectStoreFactory(database).store()
    state: Any
    if database == FLWR_IN_MEMORY_DB_NAME:
        state = InMemoryLinkState(NoOpFederationManager(), store)
    else:
        state = SqlLinkState(database, NoOpFederationManager(), store)
        state.initialize()
    node_id = state.create_node("owner", "owner", b"site-key", 30.0)
    assert state.activate_node(node_id, 30.0)
    run_id = state.create_run(
        None, None, None, {}, NOOP_FEDERATION_ID, None, None, TaskType.SERVER_APP
    )
    return fleet, runtime, state, node_id, run_id


def _send(state: Any, message: Any, run_id: int) -> None:
    """Store ``message`` as Flower's push handlers do, then its objects one by one."""
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects, get_object_tree

    message.metadata.__dict__["_message_id"] = message.object_id
    stored, missing = state.store_message_and_object_tree(
        message, get_object_tree(message), state.start_session(run_id)
    )
    assert stored
    objects = get_all_nested_objects(message)
    for object_id in missing:
        time.sleep(0.05)  # the sender pushes each object in a request of its own
        state.object_store.put(object_id, objects[object_id].deflate())


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
def test_flowers_superlink_answers_held_pulls_when_message_and_objects_are_stored(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any, backend: str
) -> None:
    from flwr.app import ConfigRecord, Message, RecordDict
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.proto.fleet_pb2 import PullMessagesRequest
    from flwr.proto.node_pb2 import Node
    from flwr.proto.runtime_pb2 import PullAppMessagesRequest

    database = ":flwr-in-memory:" if backend == "memory" else str(tmp_path / "superlink.db")
    fleet, runtime, state, node_id, run_id = _held_flower_superlink(monkeypatch, database)
    instruction = train_instruction(
        run_id=run_id, src_node_id=SUPERLINK_NODE_ID, dst_node_id=node_id
    )
    threading.Timer(0.2, _send, args=(state, instruction, run_id)).start()
    started = time.monotonic()
    pulled = fleet.pull_messages(
        request=PullMessagesRequest(node=Node(node_id=node_id)),
        state=state,
        store=state.object_store,
    )

    assert time.monotonic() - started < 10.0  # answered when stored, not at the hold's end
    assert [m.metadata.message_id for m in pulled.messages_list] == [instruction.object_id]
    assert _objects_stored_in(state, pulled)  # the answer waited for the objects, too

    reply = Message(RecordDict({"metrics": ConfigRecord({"loss": 0.5})}), reply_to=instruction)
    threading.Timer(0.2, _send, args=(state, reply, run_id)).start()
    request = PullAppMessagesRequest(message_ids=[instruction.object_id])
    started = time.monotonic()
    replies = runtime.pull_messages(request, state, SimpleNamespace(run_id=run_id))

    assert time.monotonic() - started < 10.0
    assert [m.metadata.reply_to_message_id for m in replies.messages_list] == [
        instruction.object_id
    ]
    assert _objects_stored_in(state, replies)


def _objects_stored_in(state: Any, answer: Any) -> bool:
    from flwr.supercore.inflatable.inflatable_object import iterate_object_tree

    ids = [t.object_id for root in answer.message_object_trees for t in iterate_object_tree(root)]
    return bool(ids) and all(state.object_store.get(object_id) for object_id in ids)


def test_a_flower_with_other_pull_handlers_is_left_alone(caplog: pytest.LogCaptureFixture) -> None:
    def other(request: Any) -> None:
        return None

    fleet, runtime = _handlers(other, other)
    with caplog.at_level(logging.WARNING, logger="fedlora.flower_internals.link_hold"):
        assert hold_pulls(PullHold(MessageSignal()), fleet=fleet, runtime=runtime) is False
    assert fleet.pull_messages is other and runtime.pull_messages is other
    assert "pulls not held" in caplog.text


def _store_classes() -> list[type[Any]]:
    from flwr.supercore.object_store.in_memory_object_store import InMemoryObjectStore
    from flwr.supercore.object_store.sql_object_store import SqlObjectStore

    return [InMemoryObjectStore, SqlObjectStore]


def test_the_installed_flower_has_the_handlers_and_states_that_are_held() -> None:
    # True only while Flower's SuperLink keeps the checked releases' handlers (CHECKED_FLOWER).
    from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState
    from flwr.server.superlink.linkstate.sql_linkstate import SqlLinkState
    from flwr.superlink.servicer.fleet import fleet_handlers
    from flwr.superlink.servicer.runtime import runtime_handlers

    fleet, runtime = _handlers(fleet_handlers.pull_messages, runtime_handlers.pull_messages)
    state_classes = [type("Memory", (InMemoryLinkState,), {}), type("Sql", (SqlLinkState,), {})]
    store_classes = [type(f"Store{i}", (cls,), {}) for i, cls in enumerate(_store_classes())]

    assert hold_pulls(
        PullHold(MessageSignal()),
        fleet=fleet,
        runtime=runtime,
        state_classes=state_classes,
        store_classes=store_classes,
    )
    assert fleet.pull_messages.__wrapped__ is fleet_handlers.pull_messages
    assert runtime.pull_messages.__wrapped__ is runtime_handlers.pull_messages


def test_a_warm_node_asks_again_at_once_after_a_held_pull(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    clock = [100.0]
    monkeypatch.setattr(time, "sleep", slept.append)
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    waits = SupernodeWaits(0.2, first_idle=0.02)

    for _ in range(4):  # quick empty pulls: the back-off grows to the poll interval
        clock[0] += 0.01
        waits.sleep(3)
    clock[0] += HELD_PULL_S + 0.5  # the SuperLink held this pull
    waits.sleep(3)
    clock[0] += 0.01
    waits.sleep(3)

    assert slept == [0.02, 0.04, 0.08, 0.16, 0.02, 0.2]


def test_the_superlink_command_holds_pulls_unless_told_not_to(tmp_path: Any) -> None:
    held = deploy.superlink_argv(tmp_path, port=9100, insecure=True, pull_hold=2.5)
    plain = deploy.superlink_argv(tmp_path, port=9100, insecure=True, pull_hold=0)

    assert held[1:5] == ["-m", "fedlora.flower_internals.link_superlink", "--pull-hold", "2.5"]
    args, flower_args = _parse(held[3:])  # what the module parses after ``-m NAME``
    assert args.pull_hold == 2.5
    assert flower_args[:2] == ["--host", "127.0.0.1"] and flower_args[-1] == "--insecure"
    # no hold: still fedlora's process (it keeps the Control API to the operator)
    assert plain[1:5] == ["-m", "fedlora.flower_internals.link_superlink", "--pull-hold", "0"]
    with pytest.raises(ConfigError, match="pull hold"):
        deploy.superlink_argv(tmp_path, insecure=True, pull_hold=-1)


def test_the_cli_refuses_a_bad_pull_hold_in_one_line(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from fedlora.cli.main import main as fedlora_main

    argv = ["deploy", "superlink", "--pki", str(tmp_path), "--insecure", "--pull-hold", "-1"]

    assert fedlora_main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert "pull hold must be between 0 and 10" in error and len(error.splitlines()) == 1

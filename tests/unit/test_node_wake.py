"""The warm worker in the SuperNode's process: woken by new tasks, served by the node's state."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.common.constant import Status, SubStatus
from flwr.proto.runtime_pb2 import AcquireTaskRequest
from flwr.supercore.constant import TaskType
from flwr.supercore.fab import Fab
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supercore.run import Run
from flwr.supernode.nodestate.in_memory_nodestate import InMemoryNodeState

from fedlora.flower_internals import node_supernode, node_worker
from fedlora.flower_internals.node_local_runtime import (
    LocalRuntimeClient,
    RuntimeTaskError,
    local_runtime_available,
)
from fedlora.flower_internals.node_wake import TaskSignal, notify_on_new_tasks
from tests.flower_messages import train_instruction

ROOT = Path(__file__).resolve().parents[2]
RUN_ID = 7
NODE_ID = 42


class _State:
    """Stands in for Flower's node state: ``create_task`` returns ``None`` on a collision."""

    def __init__(self, task_ids: list[int | None]) -> None:
        self.task_ids = task_ids

    def create_task(self, task_type: str, run_id: int, fab_hash: str) -> int | None:
        return self.task_ids.pop(0)


def test_a_created_task_notifies_the_worker_and_a_failed_one_does_not() -> None:
    state_class = type("State", (_State,), {})
    signal = TaskSignal()
    assert notify_on_new_tasks(signal, state_class) is True
    state = state_class([None, 7, 8])

    assert state.create_task(task_type="clientapp", run_id=1, fab_hash="f") is None
    assert signal.wait(0.0) is False  # nothing was created, nothing to wake for
    assert signal.state is None

    assert state.create_task(task_type="clientapp", run_id=1, fab_hash="f") == 7
    assert state.create_task(task_type="clientapp", run_id=1, fab_hash="f") == 8
    assert signal.wait(5.0) is True  # at once, not after 5 s
    assert signal.state is state  # the worker learns the node's state from it
    assert signal.wait(0.0) is False  # both notifications were taken by the first wait


def test_a_flower_that_creates_tasks_differently_is_left_alone() -> None:
    class Other:
        def create_task(self, kind: str) -> int:
            return 1

    original = Other.create_task

    assert notify_on_new_tasks(TaskSignal(), Other) is False
    assert notify_on_new_tasks(TaskSignal(), type("NoTasks", (), {})) is False
    assert Other.create_task is original


def test_the_installed_flower_has_what_the_in_process_worker_calls() -> None:
    # True only while Flower's node keeps the checked releases' Runtime handlers (CHECKED_FLOWER).
    assert local_runtime_available() is True


def _fedlora_fab() -> Fab:
    import hashlib
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("pyproject.toml", (ROOT / "pyproject.toml").read_text())
    content = buffer.getvalue()
    return Fab(hash_str=hashlib.sha256(content).hexdigest(), content=content, verifications={})


def _node_holding_a_message(monkeypatch: pytest.MonkeyPatch) -> tuple[Any, TaskSignal, Message]:
    """A SuperNode state as its fleet loop leaves it on a new run's first message."""
    from flwr.supernode.start_client_internal import _insert_message

    # restored after the test (the method is inherited: this sets it on the class itself)
    monkeypatch.setattr(InMemoryNodeState, "create_task", InMemoryNodeState.create_task)
    signal = TaskSignal()
    assert notify_on_new_tasks(signal) is True
    state = InMemoryNodeState(ObjectStoreFactory().store())
    state.set_node_id(NODE_ID)
    fab = _fedlora_fab()
    run = Run.create_empty(RUN_ID)
    run.fab_hash = fab.hash_str
    state.store_run(run)
    state.store_fab(fab)
    context = Context(
        run_id=RUN_ID, node_id=NODE_ID, node_config={}, state=RecordDict(), run_config={}
    )
    state.set_run_series_context(run.series_id, context)
    message = train_instruction(run_id=RUN_ID, src_node_id=1, dst_node_id=NODE_ID)
    _insert_message(message, state, state.object_store)
    task_id = state.create_task(task_type=TaskType.CLIENT_APP, run_id=RUN_ID, fab_hash=fab.hash_str)
    assert task_id is not None
    return state, signal, message


def test_the_in_process_worker_runs_a_task_through_the_nodes_own_state(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    state, signal, sent = _node_holding_a_message(monkeypatch)
    monkeypatch.setattr(node_worker, "shorten_pull_backoff", lambda **kwargs: True)
    seen: list[Message] = []

    assert signal.wait(5.0) is True and signal.state is state
    stop = threading.Event()
    replied = threading.Event()
    worker = threading.Thread(
        target=node_worker.serve,
        args=(lambda token: LocalRuntimeClient(state, token),),
        kwargs={
            "poll_interval": 3.0,
            "client_app": _echo_app(seen),
            "stop": stop,
            "wake": signal,
            "replied": replied,
        },
    )
    worker.start()
    try:
        assert replied.wait(30), "the worker never finished the task"
    finally:
        stop.set()
        signal.notify(state)  # end the worker's wait now rather than after 3 s
        worker.join(timeout=10)
    assert not worker.is_alive()
    _assert_the_task_was_answered(state, sent, seen)


def _assert_the_task_was_answered(state: Any, sent: Message, seen: list[Message]) -> None:
    assert [message.metadata.message_id for message in seen] == [sent.metadata.message_id]
    replies = state.get_messages_legacy(is_reply=True)
    assert len(replies) == 1
    assert replies[0].metadata.reply_to_message_id == sent.metadata.message_id
    (finished,) = state.get_tasks(statuses=[Status.FINISHED])
    assert finished.status.sub_status == SubStatus.COMPLETED
    assert state.get_tasks(statuses=[Status.PENDING]) == []


def _echo_app(seen: list[Message]) -> Callable[[Message, Context], Message]:
    def client_app(message: Message, context: Context) -> Message:
        seen.append(message)
        record = message.content["round"]
        assert isinstance(record, ConfigRecord)
        content = RecordDict({"site": ConfigRecord({"got": record["server-round"]})})
        return Message(content, reply_to=message)

    return client_app


def test_the_worker_process_path_runs_a_task_over_flowers_runtime_http_api(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import socket
    import types

    import uvicorn
    from flwr.supernode.main import create_app

    state, _, sent = _node_holding_a_message(monkeypatch)
    monkeypatch.setattr(node_worker, "shorten_pull_backoff", lambda **kwargs: True)
    app = create_app(state_factory=types.SimpleNamespace(state=lambda: state))  # type: ignore[arg-type]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    serving = threading.Thread(target=server.run, daemon=True)
    serving.start()
    seen: list[Message] = []
    stop = threading.Event()
    replied = threading.Event()
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.started, "the Runtime API did not start"
        worker = threading.Thread(
            target=node_worker.serve,
            args=(node_worker.http_connector(f"127.0.0.1:{port}"),),
            kwargs={
                "poll_interval": 0.05,
                "client_app": _echo_app(seen),
                "stop": stop,
                "replied": replied,
            },
        )
        worker.start()
        assert replied.wait(30), "the worker never finished the task"
        stop.set()
        worker.join(timeout=10)
        assert not worker.is_alive()
    finally:
        stop.set()
        server.should_exit = True
        serving.join(timeout=10)
    assert not serving.is_alive()
    _assert_the_task_was_answered(state, sent, seen)


def test_a_task_token_the_node_does_not_know_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    state, _, _ = _node_holding_a_message(monkeypatch)
    from flwr.proto.runtime_pb2 import PullTaskInputRequest

    with pytest.raises(RuntimeTaskError, match="no task for this token"):
        LocalRuntimeClient(state, "forged").PullTaskInput(PullTaskInputRequest())
    with pytest.raises(RuntimeTaskError):
        LocalRuntimeClient(state).PullTaskInput(PullTaskInputRequest())
    assert LocalRuntimeClient(state, "forged").task_heartbeat() is False


def test_responses_are_copies_the_worker_cannot_change_the_node_through(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    state, _, _ = _node_holding_a_message(monkeypatch)
    client = LocalRuntimeClient(state)
    request = AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP.value])

    acquired = client.AcquireTask(request)
    acquired.task.run_id = 999  # the worker's copy only

    (task,) = state.get_tasks()
    assert task.run_id == RUN_ID
    assert LocalRuntimeClient(state, acquired.token).task_heartbeat() is True


class _FakeRuntime:
    """The node's Runtime API as the worker's loop sees it: records when it is asked."""

    def __init__(self) -> None:
        self.asked: list[float] = []

    def AcquireTask(self, request: Any) -> Any:  # noqa: N802 -- Flower's name
        from flwr.proto.runtime_pb2 import AcquireTaskResponse

        self.asked.append(time.monotonic())
        return AcquireTaskResponse()

    def close(self) -> None:
        pass


def test_the_worker_asks_for_a_task_when_woken_not_only_every_poll_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runtime = _FakeRuntime()
    monkeypatch.setattr(node_worker, "shorten_pull_backoff", lambda **kwargs: True)
    signal = TaskSignal()
    stop = threading.Event()
    worker = threading.Thread(
        target=node_worker.serve,
        args=(lambda token: runtime,),
        kwargs={
            "poll_interval": 3.0,
            "client_app": lambda message, context: message,
            "stop": stop,
            "wake": signal,
        },
    )
    worker.start()
    try:
        deadline = time.monotonic() + 10
        while not runtime.asked and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(runtime.asked) == 1  # asked once at start, now waiting up to 3 s
        woken_at = time.monotonic()
        signal.notify(object())
        while len(runtime.asked) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(runtime.asked) == 2
        # far sooner than the 3 s poll interval (1 s leaves room for a loaded machine)
        assert runtime.asked[1] - woken_at < 1.0
    finally:
        stop.set()
        signal.notify(object())  # end the wait now rather than after 3 s
        worker.join(timeout=10)
    assert not worker.is_alive()


class _FakeThread:
    started: ClassVar[list[_FakeThread]] = []

    def __init__(self, target: Any, args: tuple[Any, ...], name: str, daemon: bool) -> None:
        self.target, self.args, self.name, self.daemon = target, args, name, daemon

    def start(self) -> None:
        _FakeThread.started.append(self)


def test_the_node_runs_its_warm_worker_in_its_own_process(monkeypatch: pytest.MonkeyPatch) -> None:
    _FakeThread.started = []
    popen: list[Any] = []
    monkeypatch.setattr(node_supernode.threading, "Thread", _FakeThread)
    monkeypatch.setattr(node_supernode.subprocess, "Popen", popen.append)
    monkeypatch.setattr(node_supernode, "notify_on_new_tasks", lambda signal: True)
    replies = threading.Event()

    where = node_supernode.start_worker(["--port", "9300"], poll_interval=0.2, replies=replies)

    assert where == "thread" and popen == []
    (thread,) = _FakeThread.started
    assert thread.daemon and thread.args[1:] == (0.2, replies)


def test_without_flowers_runtime_handlers_the_worker_is_a_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _FakeThread.started = []
    popen: list[Any] = []
    monkeypatch.setattr(node_supernode.threading, "Thread", _FakeThread)
    monkeypatch.setattr(node_supernode.subprocess, "Popen", popen.append)
    monkeypatch.setattr(node_supernode, "local_runtime_available", lambda: False)

    where = node_supernode.start_worker(["--port", "9300"], poll_interval=0.2)

    assert where == "process" and _FakeThread.started == []
    (argv,) = popen
    assert argv[argv.index("--runtime-api-address") + 1] == "127.0.0.1:9300"


def test_a_worker_thread_that_stops_takes_its_node_down(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    exits: list[int] = []

    def broken_serve(*args: Any, **kwargs: Any) -> None:
        raise ImportError("no module named torch")

    monkeypatch.setattr(node_worker, "serve", broken_serve)
    monkeypatch.setattr(node_supernode.os, "_exit", exits.append)
    signal = TaskSignal()
    signal.notify(object())  # the node's first task

    with caplog.at_level("ERROR", logger="fedlora.flower_internals.node_supernode"):
        node_supernode._serve_in_this_process(signal, 0.2, None)

    assert exits == [1]
    assert "the warm worker stopped; the SuperNode exits" in caplog.text
    assert "no module named torch" in caplog.text

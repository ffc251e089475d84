"""Held pulls beyond 16 nodes: the SuperLink's request threads sized for them."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any

import anyio
import anyio.to_thread
import pytest

from fedlora.errors import ConfigError
from fedlora.flower_internals import link_superlink
from fedlora.flower_internals.link_hold import (
    DEFAULT_MAX_HELD,
    FLOWER_REQUEST_THREADS,
    OTHER_REQUEST_THREADS,
    MessageSignal,
    PullHold,
)
from fedlora.flower_internals.link_threads import (
    SizedThreadPool,
    check_threads,
    size_request_threads,
)

CALLS = 60
"""Concurrent blocking handlers: more than AnyIO's default 40 threads."""


def _until(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def _blocking_app(barrier: threading.Barrier) -> Any:
    """An ASGI app whose handler blocks in a worker thread until CALLS handlers run at once."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await anyio.to_thread.run_sync(barrier.wait)

    return app


async def _call_concurrently(app: Any) -> None:
    async with anyio.create_task_group() as group:
        for _ in range(CALLS):
            group.start_soon(app, {"type": "http"}, None, None)


def test_the_default_pool_cannot_run_sixty_blocking_handlers_at_once() -> None:
    """The limit being lifted: AnyIO's 40 threads leave 20 handlers queued."""
    barrier = threading.Barrier(CALLS, timeout=1.0)

    with pytest.raises(BaseException) as raised:  # an ExceptionGroup of the task group
        anyio.run(_call_concurrently, _blocking_app(barrier))
    assert "BrokenBarrierError" in repr(raised.value)


def test_a_sized_pool_runs_them_all_at_once() -> None:
    barrier = threading.Barrier(CALLS, timeout=10.0)
    sized = SizedThreadPool(_blocking_app(barrier), CALLS + OTHER_REQUEST_THREADS)

    anyio.run(_call_concurrently, sized)

    assert sized.sized and barrier.n_waiting == 0 and not barrier.broken


def test_the_pool_is_sized_once_before_the_first_call_passes_on() -> None:
    limiter = SimpleNamespace(total_tokens=40)
    calls: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        calls.append(f"{scope['type']} with {limiter.total_tokens} threads")

    sized = SizedThreadPool(app, 280, limiter=lambda: limiter)
    anyio.run(sized, {"type": "lifespan"}, None, None)
    limiter.total_tokens = 7  # not set again on later calls
    anyio.run(sized, {"type": "http"}, None, None)

    assert calls == ["lifespan with 280 threads", "http with 7 threads"]


def test_uvicorn_run_serves_flowers_app_in_a_sized_pool() -> None:
    served: list[Any] = []
    uvicorn = SimpleNamespace(run=lambda app, **kwargs: served.append((app, kwargs)))
    flower_cli = SimpleNamespace(uvicorn=uvicorn)

    async def flower_app(scope: Any, receive: Any, send: Any) -> None:
        return None

    assert size_request_threads(280, superlink_cli=flower_cli)  # type: ignore[arg-type]
    uvicorn.run(flower_app, port=9093)

    ((app, kwargs),) = served
    assert isinstance(app, SizedThreadPool) and app.app is flower_app and app.threads == 280
    assert kwargs == {"port": 9093}


def test_a_flower_served_otherwise_keeps_its_pool(caplog: pytest.LogCaptureFixture) -> None:
    assert not size_request_threads(280, superlink_cli=SimpleNamespace())  # type: ignore[arg-type]
    assert "keep their default number" in caplog.text


@pytest.mark.parametrize("threads", [0, -1, 5000, 2.5, True])
def test_bad_thread_counts_are_refused(threads: Any) -> None:
    with pytest.raises(ConfigError, match="request threads"):
        check_threads(threads)


def test_holds_scale_with_the_pool_and_keep_to_flowers_where_it_cannot_grow(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked: list[int] = []

    def resized(threads: int) -> bool:
        asked.append(threads)
        return True

    monkeypatch.setattr(link_superlink, "size_request_threads", resized)
    assert link_superlink.held_pulls(1.0, DEFAULT_MAX_HELD).max_held == DEFAULT_MAX_HELD
    assert asked == [DEFAULT_MAX_HELD + OTHER_REQUEST_THREADS]
    assert DEFAULT_MAX_HELD >= 128  # the default serves federations far beyond 16 sites

    monkeypatch.setattr(link_superlink, "size_request_threads", lambda threads: False)
    capped = link_superlink.held_pulls(1.0, DEFAULT_MAX_HELD)
    assert capped.max_held == FLOWER_REQUEST_THREADS - OTHER_REQUEST_THREADS == 16
    assert link_superlink.held_pulls(1.0, 8).max_held == 8

    monkeypatch.setattr(link_superlink, "size_request_threads", lambda threads: 1 / 0)
    assert link_superlink.held_pulls(0.0, DEFAULT_MAX_HELD).hold_s == 0  # no hold: no resize


def test_thirty_two_nodes_are_all_held_and_each_woken_by_its_own_message() -> None:
    signal = MessageSignal()
    hold = PullHold(signal, hold_s=10.0, recheck_s=10.0)  # the default max_held
    inboxes: dict[int, list[str]] = {node: [] for node in range(32)}
    asks = dict.fromkeys(inboxes, 0)
    answers: dict[int, list[str]] = {}

    def pull(node: int) -> None:
        def ask() -> list[str]:
            asks[node] += 1
            return list(inboxes[node])

        answers[node] = hold.pull(ask, bool, waits_for=node)

    threads = [threading.Thread(target=pull, args=(node,)) for node in inboxes]
    for thread in threads:
        thread.start()
    _until(lambda: min(asks.values()) >= 1)  # every pull has asked once (a store after is seen)
    started = time.monotonic()
    for node, inbox in inboxes.items():
        inbox.append(f"for {node}")
        signal.notify(node)
    for thread in threads:
        thread.join(timeout=10.0)

    assert time.monotonic() - started < 5.0  # woken, not at the end of the 10 s holds
    assert answers == {node: [f"for {node}"] for node in inboxes}
    assert set(asks.values()) == {2}  # held (not answered at once), asked once more when woken


def test_a_store_wakes_only_the_pulls_waiting_for_it() -> None:
    signal = MessageSignal()
    woken: list[int] = []

    def waiting(node: int) -> None:
        if signal.wait_after(node, 0, timeout=30.0):
            woken.append(node)

    threads = [threading.Thread(target=waiting, args=(node,)) for node in range(20)]
    for thread in threads:
        thread.start()
    conditions = signal._waiting  # one condition per key, none shared
    _until(lambda: len(conditions) == 20)
    assert len({id(condition) for condition in conditions.values()}) == 20
    signal.notify(3)
    threads[3].join(timeout=10.0)
    assert woken == [3]
    for node in range(20):
        if node != 3:
            signal.notify(node)
    for thread in threads:
        thread.join(timeout=10.0)
    assert sorted(woken) == list(range(20))

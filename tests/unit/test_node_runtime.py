"""The warm deployment node: shorter Flower waits, the worker's FAB check, the node's argv."""

from __future__ import annotations

import importlib
import io
import sys
import threading
import time
import types
import zipfile
from pathlib import Path

import pytest
from flwr.clientapp import ClientApp
from flwr.supercore.fab import Fab

from fedlora.errors import ConfigError
from fedlora.flower_internals import node_supernode
from fedlora.flower_internals import tuning as flower_tuning
from fedlora.flower_internals.node_worker import (
    CLIENTAPP_REF,
    ForeignAppError,
    check_fab,
    load_client_app,
)
from fedlora.flower_internals.tuning import (
    PollBackoff,
    SupernodeWaits,
    shorten_pull_backoff,
    shorten_supernode_polls,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def slept(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record every ``time.sleep`` instead of sleeping."""
    calls: list[float] = []
    monkeypatch.setattr(time, "sleep", calls.append)
    return calls


def test_poll_backoff_doubles_up_to_its_cap_and_restarts_on_reset() -> None:
    backoff = PollBackoff(first=0.02, cap=0.1)

    waits = [backoff.next_wait() for _ in range(5)]
    backoff.reset()

    assert waits == [0.02, 0.04, 0.08, 0.1, 0.1]
    assert backoff.next_wait() == 0.02


def test_poll_backoff_never_starts_above_its_cap() -> None:
    assert PollBackoff(first=0.5, cap=0.05).next_wait() == 0.05


def test_supernode_idle_pulls_back_off_and_a_reply_wait_restarts_them(slept: list[float]) -> None:
    clock = SupernodeWaits(0.2, first_idle=0.02, local_check=0.01)

    for _ in range(5):
        clock.sleep(3)  # Flower's wait after a pull that found no message
    clock.sleep(0.5)  # Flower's wait for the ClientApp's reply: a message is being served
    clock.sleep(3)
    clock.sleep(1.0)  # any other wait: capped

    assert slept == [0.02, 0.04, 0.08, 0.16, 0.2, 0.01, 0.02, 0.2]
    assert clock.monotonic is time.monotonic  # everything else is the real time module


def test_with_its_worker_in_the_process_a_node_waits_for_the_reply_signal(
    slept: list[float],
) -> None:
    replies = threading.Event()
    clock = SupernodeWaits(0.2, replies=replies)

    replies.set()  # the worker has stored its reply
    clock.sleep(0.5)
    assert not replies.is_set()  # taken: the next reply check waits for the next reply
    started = time.monotonic()
    clock.sleep(0.5)  # no reply yet: wait on the signal, a bounded time
    waited = time.monotonic() - started

    assert slept == []  # neither check slept a fixed local-check interval
    assert flower_tuning.REPLY_SIGNAL_WAIT_S <= waited + 0.005 < 5
    clock.sleep(3)
    assert slept == [flower_tuning.FIRST_IDLE_POLL_S]  # the idle back-off restarted


def test_flowers_supernode_loop_is_shortened(
    monkeypatch: pytest.MonkeyPatch, slept: list[float]
) -> None:
    import flwr.supernode.start_client_internal as loop

    monkeypatch.setattr(loop, "time", time)  # restored after the test

    # True only if the installed Flower still has the checked releases' waits (CHECKED_FLOWER).
    assert shorten_supernode_polls(0.25) is True
    # (through a name: the test below reads this file, which must not hold Flower's calls)
    sleep = loop.time.sleep
    sleep(3)
    sleep(0.5)

    assert isinstance(loop.time, SupernodeWaits)
    assert slept == [flower_tuning.FIRST_IDLE_POLL_S, flower_tuning.LOCAL_CHECK_S]


def test_a_flower_that_waits_differently_is_left_alone() -> None:
    other = types.ModuleType("other_flower_loop")
    other.time = time  # type: ignore[attr-defined]
    other.__file__ = __file__  # inspect reads this test file: it lacks Flower's sleep calls

    assert shorten_supernode_polls(0.2, module=other) is False
    assert other.time is time  # type: ignore[attr-defined]


def test_object_pulls_retry_after_the_short_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.supercore.inflatable import inflatable_utils

    functions = (inflatable_utils.pull_objects, inflatable_utils.pull_and_inflate_object_from_tree)
    for function in functions:
        assert function.__kwdefaults__ is not None
        # Flower's own defaults (another test's ServerApp may have shortened them already)
        fresh = {**function.__kwdefaults__, "initial_backoff": 1, "backoff_cap": 10}
        monkeypatch.setattr(function, "__kwdefaults__", fresh)

    assert shorten_pull_backoff(0.05) is True

    for function in functions:
        assert function.__kwdefaults__ is not None
        assert function.__kwdefaults__["initial_backoff"] == 0.05
        assert function.__kwdefaults__["backoff_cap"] == 10  # the cap is Flower's

    assert shorten_pull_backoff(0.01, cap=0.05) is True

    for function in functions:
        assert function.__kwdefaults__ is not None
        assert function.__kwdefaults__["initial_backoff"] == 0.01
        assert function.__kwdefaults__["backoff_cap"] == 0.05


@pytest.mark.parametrize("seconds", [0.0, 0.001, 3.5, float("nan"), float("inf")])
def test_poll_intervals_out_of_range_are_refused(seconds: float) -> None:
    with pytest.raises(ConfigError, match="poll interval must be between"):
        flower_tuning.check_poll_interval(seconds)


def _fab(pyproject: str) -> Fab:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("pyproject.toml", pyproject)
    return Fab(hash_str="0" * 64, content=buffer.getvalue(), verifications={})


def test_the_worker_accepts_this_fedlora_and_refuses_other_apps() -> None:
    ours = (ROOT / "pyproject.toml").read_text()

    check_fab(_fab(ours), installed_version="0.1.0")

    with pytest.raises(ForeignAppError, match=r"runs fedlora only.*--cold"):
        check_fab(_fab(ours.replace('name = "fedlora"', 'name = "other"', 1)), "0.1.0")
    with pytest.raises(ForeignAppError, match=r"fedlora 0.1.0 but this node has fedlora 0.2.0"):
        check_fab(_fab(ours), installed_version="0.2.0")
    changed = ours.replace('clientapp = "fedlora.clients.app:app"', 'clientapp = "evil:app"')
    with pytest.raises(ForeignAppError, match=r"'evil:app', not 'fedlora.clients.app:app'"):
        check_fab(_fab(changed), "0.1.0")
    with pytest.raises(ForeignAppError, match=r"no readable pyproject.toml"):
        check_fab(Fab(hash_str="0" * 64, content=b"not a zip", verifications={}), "0.1.0")


def test_the_worker_loads_the_clientapp_the_app_names_by_its_reference() -> None:
    app = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    reference = app["components"]["clientapp"]

    loaded = load_client_app(reference)

    assert reference == CLIENTAPP_REF
    assert isinstance(loaded, ClientApp)
    assert loaded is importlib.import_module("fedlora.clients.app").app


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("fedlora.clients.app", "is not 'module:attribute'"),
        ("fedlora.no_such_room:app", "cannot load the ClientApp 'fedlora.no_such_room:app'"),
        ("fedlora.clients.app:no_such_app", "fedlora.clients.app has no no_such_app"),
        ("fedlora.flower_internals.node_worker:APP_NAME", "is not callable"),
    ],
)
def test_a_bad_clientapp_reference_is_refused(reference: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_client_app(reference)


def test_worker_argv_and_runtime_address() -> None:
    flower = ["--superlink", "h:9", "--host", "127.0.0.1", "--port", "9200"]

    assert node_supernode.runtime_address(flower) == "127.0.0.1:9200"
    assert node_supernode.runtime_address(["--superlink", "h:9"]) == "127.0.0.1:9094"
    argv = node_supernode.worker_argv("127.0.0.1:9200", poll_interval=0.1, parent_pid=42)
    assert argv[1:3] == ["-m", "fedlora.flower_internals.node_worker"]
    assert argv[argv.index("--parent-pid") + 1] == "42"


def test_the_node_refuses_a_bad_poll_interval(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        node_supernode.main(["--poll-interval", "9", "--", "--superlink", "h:9"])

    assert stopped.value.code == 2
    assert "poll interval must be between" in capsys.readouterr().err


def test_the_node_declares_and_keeps_the_configured_heartbeat_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import flwr.supercore.heartbeat as sender
    import flwr.supernode.fleet_http_connection as connection

    for module in (sender, connection):  # restored after the test
        monkeypatch.setattr(module, "HEARTBEAT_DEFAULT_INTERVAL", 30)

    # True only if the installed Flower still reads the interval where the checked releases do.
    assert flower_tuning.set_node_heartbeat_interval(12.5) is True

    assert connection.HEARTBEAT_DEFAULT_INTERVAL == 12.5  # declared to the SuperLink
    assert sender.HEARTBEAT_DEFAULT_INTERVAL == 12.5  # and the sending period follows it


@pytest.mark.parametrize("seconds", [9.9, 0.0, 1801.0, float("nan")])
def test_heartbeat_intervals_the_superlink_refuses_are_refused_here(
    seconds: float, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ConfigError, match="heartbeat-interval must be between 10 and 1800"):
        flower_tuning.check_heartbeat_interval(seconds)
    with pytest.raises(SystemExit) as stopped:
        node_supernode.main(["--heartbeat-interval", str(seconds), "--", "--superlink", "h:9"])
    assert stopped.value.code == 2
    assert "heartbeat-interval must be between" in capsys.readouterr().err

"""The SuperLink's operator boundary: Fleet for everyone, Control and Runtime for this host."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import MutableMapping
from types import SimpleNamespace
from typing import Any

import pytest

from fedlora.errors import ConfigError
from fedlora.flower_internals.link_operator import (
    REFUSAL,
    OperatorOnly,
    check_fleet_routes,
    guard_operator_apis,
    is_public_path,
    operator_peers,
)

PEERS = operator_peers("127.0.0.1")


class _App:
    """An ASGI app that records what reached it and answers 200."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.paths.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})


def _call(path: str, client: tuple[str, int] | None, kind: str = "http") -> tuple[int, bytes]:
    app = _App()
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> MutableMapping[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    scope = {"type": kind, "path": path, "method": "POST", "client": client}
    asyncio.run(OperatorOnly(app, PEERS)(scope, receive, send))
    if kind == "websocket":
        return (403 if sent == [{"type": "websocket.close", "code": 1008}] else 200), b""
    return int(sent[0]["status"]), bytes(sent[-1]["body"])


@pytest.mark.parametrize(
    "path",
    ["/v1/control/register-node", "/v1/control/start-run", "/v1/runtime/get-nodes", "/docs"],
)
def test_operator_routes_are_refused_to_other_hosts_and_logged(
    path: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="fedlora.flower_internals.link_operator"):
        status, body = _call(path, ("203.0.113.9", 40000))

    assert status == 403 and REFUSAL.encode() in body
    assert f"refused POST {path} from 203.0.113.9:40000" in caplog.text


@pytest.mark.parametrize("peer", ["127.0.0.1", "::1", "::ffff:127.0.0.1"])
def test_operator_routes_answer_this_host(peer: str) -> None:
    assert _call("/v1/control/register-node", (peer, 40000))[0] == 200


@pytest.mark.parametrize("peer", ["127.0.0.2", "10.0.0.1", "::ffff:10.0.0.1", "fe80::1"])
def test_other_addresses_even_on_loopback_are_not_the_operator(peer: str) -> None:
    assert _call("/v1/control/list-nodes", (peer, 1))[0] == 403
    assert _call("/v1/control/list-nodes", None)[0] == 403  # no peer known: refused
    assert _call("/v1/control/stream-logs", (peer, 1), kind="websocket")[0] == 403


def test_fleet_routes_answer_everyone_but_not_a_disguised_path() -> None:
    assert _call("/v1/fleet/pull-messages", ("203.0.113.9", 1))[0] == 200
    for path in ("/v1/fleet/../control/start-run", "/v1/fleet//x", "/v1/fleet/./x", "/v1/fleet"):
        assert not is_public_path(path)
        assert _call(path, ("203.0.113.9", 1))[0] == 403


def test_a_specific_host_address_is_the_operator_too_a_wildcard_is_not() -> None:
    assert operator_peers("203.0.113.7") == {"127.0.0.1", "::1", "203.0.113.7"}
    assert operator_peers("0.0.0.0") == operator_peers("::") == {"127.0.0.1", "::1"}
    assert operator_peers("localhost") <= {"127.0.0.1", "::1"}
    with pytest.raises(ConfigError, match="does not resolve"):
        operator_peers("no-such-host.invalid")


def _flower_cli(served: list[Any]) -> SimpleNamespace:
    return SimpleNamespace(
        uvicorn=SimpleNamespace(run=lambda app, **kwargs: served.append(app)),
        _run_superlink_http_api=lambda **kwargs: None,
    )


def test_the_guard_wraps_the_app_flower_serves(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLWR_INTERNAL_GRPC_CONTROL_API", raising=False)
    served: list[Any] = []
    cli = _flower_cli(served)
    from flwr.superlink.main import create_app

    app = create_app()

    guarded = guard_operator_apis(PEERS, superlink_cli=cli)  # type: ignore[arg-type]
    assert not guarded()
    cli.uvicorn.run(app=app, host="127.0.0.1")

    assert guarded() and isinstance(served[0], OperatorOnly) and served[0].app is app
    with pytest.raises(ConfigError, match="import string"):
        cli.uvicorn.run(app="flwr.superlink.main:app")


def test_the_guard_refuses_a_flower_it_does_not_know(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="not served by uvicorn"):
        guard_operator_apis(PEERS, superlink_cli=SimpleNamespace())  # type: ignore[arg-type]
    monkeypatch.setenv("FLWR_INTERNAL_GRPC_CONTROL_API", "1")
    with pytest.raises(ConfigError, match="FLWR_INTERNAL_GRPC_CONTROL_API"):
        guard_operator_apis(PEERS, superlink_cli=_flower_cli([]))  # type: ignore[arg-type]


def test_flower_keeps_only_fleet_routes_under_the_public_prefix() -> None:
    from flwr.superlink.main import create_app

    check_fleet_routes(create_app())  # Flower's real app: passes

    stray = SimpleNamespace(
        path="/v1/fleet/start-run",
        endpoint=SimpleNamespace(__module__="flwr.superlink.routers.control.router"),
    )
    with pytest.raises(ConfigError, match="not its Fleet router"):
        check_fleet_routes(SimpleNamespace(routes=[stray]))
    with pytest.raises(ConfigError, match="no Fleet routes"):
        check_fleet_routes(SimpleNamespace(routes=[]))

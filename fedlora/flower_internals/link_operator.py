"""The SuperLink's operator boundary: only the Fleet API is public.

Flower's SuperLink (the releases in :mod:`fedlora.flower_internals.versions`) serves three
APIs from one FastAPI app on one HTTPS ``--host/--port``:

* **Fleet** (``/v1/fleet/...``): the sites' SuperNodes. Every request is signed with a
  registered site key (``--enable-supernode-auth``); a key cannot register itself.
* **Control** (``/v1/control/...``): what the ``flwr`` CLI calls: register and remove sites,
  submit (``flwr run``), stop and list runs, stream their logs. Flower asks for no credential
  (its account plugins are Flower Enterprise only), so anyone holding the public ``ca.pem``
  who reaches the port would administer the federation.
* **Runtime** (``/v1/runtime/...``): the ServerApp (``flwr-serverapp``) and
  ``flower-superexec`` that the SuperLink starts on its own host.

Here every route but Fleet's answers only to **the operator's peers**: connections from
``127.0.0.1`` or ``::1`` (an IPv4-mapped ``::ffff:127.0.0.1`` counts as ``127.0.0.1``), or from
the SuperLink's own ``--host`` address when that is a specific one (a connection to a local
address comes from it, and Linux drops a packet from outside that claims a local source).
Anything else gets HTTP 403 with a one-line reason, and the SuperLink logs the refusal with the
peer's address. Routes unknown to this module (health, ``/docs``, a future API) fall on the
operator's side: the boundary fails closed. The operator runs ``flwr`` on the coordinator host
or through an SSH tunnel to it (``docs/deployment.md``); neither Flower nor the ``flwr`` CLI
changes.

The check wraps the ASGI app that Flower hands to ``uvicorn.run`` (outside all of Flower's
own middleware); :func:`guard_operator_apis` checks first that the installed Flower starts its
SuperLink that way and keeps its Fleet routes in its Fleet router, and refuses to start the
SuperLink otherwise, rather than serve the Control API to everyone.
"""

from __future__ import annotations

import importlib
import ipaddress
import json
import logging
import os
import posixpath
import socket
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping
from types import ModuleType
from typing import Any

from fedlora.errors import ConfigError
from fedlora.flower_internals.versions import checked_flower

logger = logging.getLogger(__name__)

PUBLIC_PREFIX = "/v1/fleet/"
"""The one path prefix anyone may reach: Flower's Fleet API (site-key authenticated)."""
LOOPBACK_PEERS = frozenset({"127.0.0.1", "::1"})
"""Peers always taken for the operator: this host's loopback addresses."""
REFUSAL = (
    "fedlora: the SuperLink's Control and Runtime APIs answer only on its own host; run flwr "
    "there or through an SSH tunnel to it (docs/deployment.md, docs/security.md)"
)
"""The ``detail`` of a 403 answer, printed by the ``flwr`` CLI."""
FLEET_ROUTER = "flwr.superlink.routers.fleet.router"
"""The module whose routes alone may live under :data:`PUBLIC_PREFIX`."""

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
Asgi = Callable[[Scope, Receive, Send], Awaitable[None]]


def is_public_path(path: str) -> bool:
    """Whether anyone may call ``path``: a normalised path under :data:`PUBLIC_PREFIX`.

    A path with ``..``, ``.`` or empty segments is not public, whatever it would route to.
    """
    return path.startswith(PUBLIC_PREFIX) and posixpath.normpath(path) == path


def _canonical(address: str) -> str:
    """``address`` as one spelling: IPv4-mapped IPv6 as IPv4, zone and case dropped."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def operator_peers(host: str) -> frozenset[str]:
    """The peer addresses taken for the operator by a SuperLink listening on ``host``.

    Loopback (``127.0.0.1``, ``::1``), plus ``host``'s own address(es) when it is a specific
    address or name: Flower's ``flower-superexec`` and ``flwr-serverapp`` connect to
    ``--host`` (to ``127.0.0.1`` when it is ``0.0.0.0``), and such a connection comes from that
    local address. A wildcard host (``0.0.0.0``, ``::``) adds nothing.

    Raises
    ------
    ConfigError
        When ``host`` is a name that does not resolve.
    """
    bare = host.strip().strip("[]")
    try:
        addresses = [ipaddress.ip_address(bare.split("%", 1)[0])]
    except ValueError:
        try:
            infos = socket.getaddrinfo(bare, None, proto=socket.IPPROTO_TCP)
        except OSError as exc:
            raise ConfigError(f"SuperLink --host {host!r} does not resolve: {exc}") from None
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
    own = {_canonical(str(ip)) for ip in addresses if not ip.is_unspecified}
    return LOOPBACK_PEERS | own


class OperatorOnly:
    """ASGI middleware: Fleet routes for everyone, every other route for the operator's peers.

    Parameters
    ----------
    app : ASGI application
        Flower's SuperLink app.
    peers : iterable of str
        Peer addresses taken for the operator (:func:`operator_peers`).
    """

    def __init__(self, app: Asgi, peers: Iterable[str]) -> None:
        self.app = app
        self.peers = frozenset(_canonical(peer) for peer in peers)

    def allows(self, scope: Scope) -> bool:
        """Whether the request of ``scope`` may reach Flower."""
        if scope["type"] not in ("http", "websocket") or is_public_path(str(scope.get("path"))):
            return True
        client = scope.get("client")
        return client is not None and _canonical(str(client[0])) in self.peers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on to Flower, or refuse it with 403 and log the peer."""
        if self.allows(scope):
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        peer = f"{client[0]}:{client[1]}" if client else "an unknown peer"
        logger.warning(
            "refused %s %s from %s: the Control and Runtime APIs answer only on this host",
            scope.get("method", "WEBSOCKET"),
            scope.get("path"),
            peer,
        )
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        body = json.dumps({"detail": REFUSAL}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 403,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _routes(app: Any) -> Iterator[tuple[str, str | None]]:
    """``(path, endpoint module)`` of every route of a FastAPI app, included routers too."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # FastAPI before 0.13x: included routes are flat in app.routes
        contexts: Iterable[Any] = getattr(app, "routes", ())
    else:
        contexts = iter_route_contexts(getattr(app, "routes", ()))
    for context in contexts:
        path = getattr(context, "path", None)
        if isinstance(path, str):
            yield path, getattr(getattr(context, "endpoint", None), "__module__", None)


def check_fleet_routes(app: Any) -> None:
    """Refuse an app with a route under :data:`PUBLIC_PREFIX` that is not Flower's Fleet API.

    Raises
    ------
    ConfigError
        When such a route exists, or the app has no Fleet route at all.
    """
    fleet = 0
    for path, module in _routes(app):
        if not path.startswith(PUBLIC_PREFIX):
            continue
        if module != FLEET_ROUTER:
            raise ConfigError(
                f"this Flower's SuperLink serves {path} from {module}, not its Fleet router: "
                "fedlora cannot tell its public routes from the operator's; install the Flower "
                "version fedlora pins"
            )
        fleet += 1
    if fleet == 0:
        raise ConfigError(
            "this Flower's SuperLink has no Fleet routes under /v1/fleet/: install the Flower "
            "version fedlora pins"
        )


def _superlink_cli() -> ModuleType:
    # the module, not the function of the same name that flwr.superlink.cli exports
    return importlib.import_module("flwr.superlink.cli.flower_superlink")


def guard_operator_apis(
    peers: Iterable[str], *, superlink_cli: ModuleType | None = None
) -> Callable[[], bool]:
    """Serve Flower's SuperLink with every route but Fleet's kept for ``peers``.

    Wraps ``uvicorn.run`` as Flower's ``flower-superlink`` module calls it, so that the app it
    serves is wrapped in :class:`OperatorOnly`. Call it in the SuperLink's own process, before
    ``flower_superlink()``.

    Parameters
    ----------
    peers : iterable of str
        The operator's peer addresses (:func:`operator_peers`).
    superlink_cli : ModuleType, optional
        Flower's ``flwr.superlink.cli.flower_superlink`` (tests pass a stand-in).

    Returns
    -------
    Callable[[], bool]
        Whether the guard has wrapped a served app yet (for checks after start-up).

    Raises
    ------
    ConfigError
        When the installed Flower does not start its SuperLink through ``uvicorn.run`` with an
        app object (``_run_superlink_http_api``), or Flower's legacy gRPC Control or Fleet
        servers are switched on (they would listen beside the guarded port).
    """
    module = _superlink_cli() if superlink_cli is None else superlink_cli
    server: Any = getattr(module, "uvicorn", None)
    serve = getattr(server, "run", None)
    if not callable(serve) or not callable(getattr(module, "_run_superlink_http_api", None)):
        raise ConfigError(
            f"this Flower's SuperLink is not served by uvicorn.run as {checked_flower()}'s is: "
            "fedlora cannot keep its Control API to the operator; install a Flower version "
            "fedlora pins"
        )
    for variable in ("FLWR_INTERNAL_GRPC_CONTROL_API", "FLWR_INTERNAL_GRPC_FLEET_API"):
        if os.environ.get(variable) == "1":
            raise ConfigError(
                f"{variable}=1 starts Flower's gRPC API beside the guarded port, open to "
                "anyone: unset it"
            )
    allowed = frozenset(peers)
    wrapped: list[OperatorOnly] = []

    def guarded_run(app: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(app, str) or not callable(app):
            raise ConfigError(
                "this Flower serves its SuperLink from an import string, not an app object: "
                "fedlora cannot guard it; install the Flower version fedlora pins"
            )
        check_fleet_routes(app)
        guard = OperatorOnly(app, allowed)
        wrapped.append(guard)
        logger.info(
            "Control and Runtime APIs answer only to %s; Fleet API to everyone",
            ", ".join(sorted(guard.peers)),
        )
        return serve(guard, *args, **kwargs)

    server.run = guarded_run  # the uvicorn module object Flower calls through
    return lambda: bool(wrapped)

"""The SuperLink's request threads, sized for its held pulls.

Flower's SuperLink (the releases in :mod:`fedlora.flower_internals.versions`) serves its Fleet,
Control and Runtime APIs from one FastAPI app under ``uvicorn.run``; FastAPI runs each
(synchronous) handler in AnyIO's default thread pool, 40 threads per event loop. A held pull
(:mod:`fedlora.flower_internals.link_hold`) keeps its thread while it waits, so with 40 threads
at most 16 pulls could be held and the other requests keep 24: a federation of more than 16
sites had its other nodes poll.

:func:`size_request_threads` wraps the ASGI app that Flower hands to ``uvicorn.run`` so that,
on the first call into it (the lifespan start-up, before any request), the running event loop's
default thread pool gets ``threads`` threads (AnyIO starts them only as requests need them,
and a held pull's thread sleeps on a condition). It checks first that the installed Flower
starts its SuperLink that way and that AnyIO has the pool it sizes; otherwise nothing changes
and it says so, and the SuperLink holds at most as many pulls as Flower's own pool leaves room
for.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from types import ModuleType
from typing import Any

from fedlora.errors import ConfigError

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Asgi = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_THREADS = 4096
"""Most request threads accepted: a bound on a typo, well above any federation's needs."""


def _default_limiter() -> Any:
    from anyio.to_thread import current_default_thread_limiter

    return current_default_thread_limiter()


class SizedThreadPool:
    """An ASGI app that sizes the event loop's default thread pool before its first call.

    Parameters
    ----------
    app : ASGI application
        The app to serve (Flower's SuperLink, or what wraps it).
    threads : int
        Threads of AnyIO's default pool in the serving event loop.
    limiter : callable, optional
        Returns the running loop's default limiter (AnyIO's; tests pass a stand-in).
    """

    def __init__(
        self, app: Asgi, threads: int, limiter: Callable[[], Any] = _default_limiter
    ) -> None:
        self.app = app
        self.threads = threads
        self._limiter = limiter
        self.sized = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Size the pool once (in the event loop that serves), then pass the call on."""
        if not self.sized:
            self._limiter().total_tokens = self.threads
            self.sized = True
            logger.info("SuperLink request threads: %d", self.threads)
        await self.app(scope, receive, send)


def check_threads(threads: int) -> int:
    """``threads`` as a request pool size.

    Raises
    ------
    ConfigError
        Unless it is an integer from 1 to :data:`MAX_THREADS`.
    """
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= MAX_THREADS:
        raise ConfigError(
            f"request threads must be an integer from 1 to {MAX_THREADS}, got {threads}"
        )
    return threads


def _superlink_cli() -> ModuleType:
    return importlib.import_module("flwr.superlink.cli.flower_superlink")


def size_request_threads(threads: int, *, superlink_cli: ModuleType | None = None) -> bool:
    """Serve the SuperLink with ``threads`` request threads (AnyIO's default pool).

    Call it in the SuperLink's process before ``flower_superlink()`` and before
    :func:`~fedlora.flower_internals.link_operator.guard_operator_apis` (which then wraps this).

    Parameters
    ----------
    threads : int
        Request threads: the held pulls plus
        :data:`~fedlora.flower_internals.link_hold.OTHER_REQUEST_THREADS`.
    superlink_cli : ModuleType, optional
        Flower's ``flwr.superlink.cli.flower_superlink`` (tests pass a stand-in).

    Returns
    -------
    bool
        Whether the pool will be sized (``False``: this Flower or AnyIO serves otherwise;
        nothing changed and a warning is logged).

    Raises
    ------
    ConfigError
        When ``threads`` is not from 1 to :data:`MAX_THREADS`.
    """
    check_threads(threads)
    module = _superlink_cli() if superlink_cli is None else superlink_cli
    server: Any = getattr(module, "uvicorn", None)
    serve = getattr(server, "run", None)
    try:
        from anyio.to_thread import current_default_thread_limiter  # noqa: F401
    except ImportError:
        serve = None
    if not callable(serve):
        logger.warning(
            "this Flower's SuperLink is not served by uvicorn.run with AnyIO's thread pool; "
            "its request threads keep their default number"
        )
        return False

    def sized_run(app: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(app, str) or not callable(app):
            return serve(app, *args, **kwargs)
        return serve(SizedThreadPool(app, threads), *args, **kwargs)

    server.run = sized_run  # the uvicorn module object Flower calls through
    return True

"""Held pulls on the SuperLink: a pull that finds nothing waits for the next message.

Flower 1.41's SuperLink answers every pull at once, so a SuperNode learns of its next message
only at its next poll, and the ServerApp of a reply only at its next ask: each crossing of a
round waits a fraction of a poll interval, and every empty poll is a request the SuperLink
serves (about 9 ms of its CPU each on the 2-core development machine).

Here a pull that finds nothing is held in the SuperLink for up to ``hold_s`` seconds and
answered as soon as a message for it is stored: a SuperNode's pull for its next instruction
(``Fleet.PullMessages``) and a ServerApp's pull for its replies (``Runtime.PullMessages``). The
answer is the one Flower gives (the handler runs again after each wake-up), only later, and it
also waits (within the same hold) until the message's objects have arrived: a message is
stored before its sender pushes its objects, and a puller answered at once would retry pulls
of objects still on their way (measured: the warm workers' ``pulled in`` doubled). Each
LinkState store of a message with its object tree and each ObjectStore store of an object's
content wakes the held pulls (:class:`MessageSignal`); a held pull also looks again every
``recheck_s`` seconds, so a store made some other way is found within that time.

A held pull keeps one of the SuperLink's request threads (FastAPI runs these handlers in a
pool of 40), so at most ``max_held`` pulls are held at a time; the rest are answered at once,
as Flower answers them. Each change is checked against the installed Flower first: if its
handlers or LinkStates differ from 1.41's, nothing changes and a warning is logged.
"""

from __future__ import annotations

import inspect
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any, TypeVar

from fedlora.errors import ConfigError

logger = logging.getLogger(__name__)

DEFAULT_HOLD_S = 1.0
"""How long the SuperLink holds a pull that finds nothing (``fedlora deploy superlink``)."""
MAX_HOLD_S = 10.0
"""Longest hold accepted: well inside the 30 s request timeout of Flower's HTTP clients."""
DEFAULT_MAX_HELD = 16
"""Pulls held at once; the SuperLink's other requests keep the rest of its 40 threads."""
RECHECK_S = 0.1
"""A held pull looks again this often even without a wake-up."""

_Response = TypeVar("_Response")


def check_hold(seconds: float) -> float:
    """``seconds`` as a pull hold, 0 meaning Flower's immediate answers.

    Raises
    ------
    ConfigError
        Unless ``0 <= seconds <= MAX_HOLD_S``.
    """
    if not math.isfinite(seconds) or not 0 <= seconds <= MAX_HOLD_S:
        raise ConfigError(f"pull hold must be between 0 and {MAX_HOLD_S} s, got {seconds}")
    return seconds


class MessageSignal:
    """Counts the messages the SuperLink has stored and wakes whoever waits for the next."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._stored = 0

    def notify(self) -> None:
        """A message has been stored: wake every held pull."""
        with self._changed:
            self._stored += 1
            self._changed.notify_all()

    def count(self) -> int:
        """Messages stored so far (compare with a later count to see whether one came)."""
        with self._changed:
            return self._stored

    def wait_after(self, count: int, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a message stored after ``count``; whether one was."""
        with self._changed:
            return self._changed.wait_for(lambda: self._stored != count, timeout)


class PullHold:
    """Holds pulls that find nothing until a message is stored or ``hold_s`` has passed.

    Parameters
    ----------
    signal : MessageSignal
        Notified by the LinkState whenever it stores a message.
    hold_s : float
        Longest hold of one pull, in seconds (0: none).
    max_held : int
        Pulls held at once; a pull that finds every slot taken is answered at once.
    recheck_s : float
        A held pull looks again this often without a wake-up.
    """

    def __init__(
        self,
        signal: MessageSignal,
        *,
        hold_s: float = DEFAULT_HOLD_S,
        max_held: int = DEFAULT_MAX_HELD,
        recheck_s: float = RECHECK_S,
    ) -> None:
        if max_held < 1:
            raise ConfigError(f"max held pulls must be at least 1, got {max_held}")
        if not recheck_s > 0:
            raise ConfigError(f"recheck interval must be positive, got {recheck_s}")
        self.signal = signal
        self.hold_s = check_hold(hold_s)
        self.recheck_s = recheck_s
        self.max_held = max_held
        self._slots = threading.BoundedSemaphore(max_held)

    def pull(
        self,
        ask: Callable[[], _Response],
        found: Callable[[_Response], bool],
        ready: Callable[[_Response], bool] | None = None,
    ) -> _Response:
        """``ask()``; while it finds nothing, wait for a stored message and ask again.

        Parameters
        ----------
        ask : callable
            The pull itself (Flower's handler); asked again after each wake-up.
        found : callable
            Whether an answer holds what the puller waits for.
        ready : callable, optional
            Whether what was found can be used at once (its objects are all in the store);
            a found answer is kept until then, within the same hold: the puller would
            otherwise retry pulls of objects that are still on their way.

        Returns
        -------
        answer
            The first answer that is found and ready, or the last one when the hold ends
            (or at once when no slot is free).
        """
        stored = self.signal.count()  # before asking, so a message stored meanwhile wakes us
        answer = ask()
        is_ready = ready or (lambda _: True)
        if self.hold_s == 0 or (found(answer) and is_ready(answer)):
            return answer
        if not self._slots.acquire(blocking=False):
            return answer
        try:
            deadline = time.monotonic() + self.hold_s
            while not found(answer):
                if not self._wait(stored, deadline):
                    return answer
                stored = self.signal.count()
                answer = ask()
            while not is_ready(answer) and self._wait(stored, deadline):
                stored = self.signal.count()
            return answer
        finally:
            self._slots.release()

    def _wait(self, stored: int, deadline: float) -> bool:
        """Wait for a store after ``stored`` (or a recheck); ``False`` once the hold is over."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        self.signal.wait_after(stored, min(remaining, self.recheck_s))
        return True


def _link_state_classes() -> list[type[Any]]:
    from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState
    from flwr.server.superlink.linkstate.sql_linkstate import SqlLinkState

    return [InMemoryLinkState, SqlLinkState]


def _object_store_classes() -> list[type[Any]]:
    from flwr.supercore.object_store.in_memory_object_store import InMemoryObjectStore
    from flwr.supercore.object_store.sql_object_store import SqlObjectStore

    return [InMemoryObjectStore, SqlObjectStore]


def _notify_after(
    cls: type[Any], name: str, signal: MessageSignal, stored: Callable[[Any], bool]
) -> None:
    method = getattr(cls, name)
    if getattr(method, "__fedlora_notifies__", None) is not None:
        method = method.__wrapped__  # changed before in this process: the new signal replaces it

    def call_and_notify(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = method(self, *args, **kwargs)
        if stored(result):
            signal.notify()
        return result

    call_and_notify.__fedlora_notifies__ = signal  # type: ignore[attr-defined]
    call_and_notify.__doc__ = method.__doc__
    call_and_notify.__wrapped__ = method  # type: ignore[attr-defined]
    setattr(cls, name, call_and_notify)


def notify_on_stores(
    signal: MessageSignal,
    state_classes: Iterable[type[Any]] | None = None,
    store_classes: Iterable[type[Any]] | None = None,
) -> bool:
    """Make the SuperLink's stores notify ``signal``: messages and the objects they carry.

    Each LinkState notifies after it stores a message with its object tree (both the
    ServerApp's instructions and the SuperNodes' replies are stored that way in Flower
    1.41), each ObjectStore after it stores an object's content. Notifying after the store
    returns, not inside it, means a woken pull finds the message's object tree registered:
    Flower deletes a pulled message whose tree it cannot find.

    Returns
    -------
    bool
        Whether every class was changed (``False``: none was, a warning is logged).
    """
    states = list(_link_state_classes() if state_classes is None else state_classes)
    stores = list(_object_store_classes() if store_classes is None else store_classes)
    if not all(callable(getattr(c, "store_message_and_object_tree", None)) for c in states) or not (
        all(callable(getattr(c, "put", None)) for c in stores)
    ):
        logger.warning("this Flower's LinkState stores messages differently; pulls not held")
        return False
    for state_class in states:
        _notify_after(state_class, "store_message_and_object_tree", signal, lambda r: bool(r[0]))
    for store_class in stores:
        _notify_after(store_class, "put", signal, lambda _: True)
    return True


def _objects_stored(store: Any, answer: Any) -> bool:
    """Whether every object of every message in ``answer`` has its content in ``store``."""
    from flwr.supercore.inflatable.inflatable_object import iterate_object_tree

    return all(
        store.get(tree.object_id)
        for root in answer.message_object_trees
        for tree in iterate_object_tree(root)
    )


def _fleet_handlers() -> ModuleType:
    from flwr.superlink.servicer.fleet import fleet_handlers

    return fleet_handlers


def _runtime_handlers() -> ModuleType:
    from flwr.superlink.servicer.runtime import runtime_handlers

    return runtime_handlers


def _takes(function: Any, names: tuple[str, ...]) -> bool:
    try:
        return tuple(inspect.signature(function).parameters) == names
    except (TypeError, ValueError):
        return False


def hold_pulls(
    hold: PullHold,
    *,
    fleet: ModuleType | None = None,
    runtime: ModuleType | None = None,
    state_classes: Iterable[type[Any]] | None = None,
    store_classes: Iterable[type[Any]] | None = None,
) -> bool:
    """Hold the SuperLink's empty pulls (SuperNodes' and ServerApp's) with ``hold``.

    Parameters
    ----------
    hold : PullHold
        The hold; its signal is notified by every LinkState store from now on.
    fleet, runtime : ModuleType, optional
        The handler modules to change; Flower's SuperLink Fleet and Runtime handlers by
        default (the routers look their functions up on each request).
    state_classes, store_classes : iterable of type, optional
        The LinkState and ObjectStore classes that notify; Flower's in-memory and SQL ones
        by default.

    Returns
    -------
    bool
        Whether pulls are held (``False``: nothing changed, a warning is logged).
    """
    fleet = _fleet_handlers() if fleet is None else fleet
    runtime = _runtime_handlers() if runtime is None else runtime
    fleet_pull = getattr(fleet, "pull_messages", None)
    runtime_pull = getattr(runtime, "pull_messages", None)
    if not (
        _takes(fleet_pull, ("request", "state", "store"))
        and _takes(runtime_pull, ("request", "state", "task"))
    ):
        logger.warning("this Flower's SuperLink pulls differ from Flower 1.41's; pulls not held")
        return False
    if hold.hold_s == 0 or not notify_on_stores(hold.signal, state_classes, store_classes):
        return False
    assert fleet_pull is not None and runtime_pull is not None

    def held_fleet_pull(request: Any, state: Any, store: Any) -> Any:
        return hold.pull(
            lambda: fleet_pull(request=request, state=state, store=store),
            lambda answer: len(answer.messages_list) > 0,
            lambda answer: _objects_stored(store, answer),
        )

    def held_runtime_pull(request: Any, state: Any, task: Any) -> Any:
        if not request.message_ids:
            return runtime_pull(request, state, task)
        return hold.pull(
            lambda: runtime_pull(request, state, task),
            lambda answer: len(answer.messages_list) > 0,
            lambda answer: _objects_stored(state.object_store, answer),
        )

    held_pulls: list[tuple[ModuleType, Callable[..., Any], Callable[..., Any]]] = [
        (fleet, fleet_pull, held_fleet_pull),
        (runtime, runtime_pull, held_runtime_pull),
    ]
    for module, function, held in held_pulls:
        held.__doc__ = function.__doc__
        held.__wrapped__ = function  # type: ignore[attr-defined]
        setattr(module, "pull_messages", held)  # noqa: B010 -- mypy: module attribute
    logger.info("empty pulls held up to %.2f s (at most %d at a time)", hold.hold_s, hold.max_held)
    return True

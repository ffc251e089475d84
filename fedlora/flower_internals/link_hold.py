"""Held pulls on the SuperLink: a pull that finds nothing waits for the next message.

Flower's SuperLink answers every pull at once, so a SuperNode learns of its next message
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
LinkState store of a message with its object tree wakes the pulls held for its destination
node, and each ObjectStore store of an object's content the answers waiting for their objects
(:class:`MessageSignal`); a held pull also looks again every ``recheck_s`` seconds, so an
answer Flower makes without a store (an error reply for a node gone offline) is found within
that time.

A held pull keeps one of the SuperLink's request threads (FastAPI runs these handlers in
AnyIO's thread pool, 40 threads unless changed), so at most ``max_held`` pulls are held at a
time; the rest are answered at once, as Flower answers them. The SuperLink's pool is sized to
``max_held`` + :data:`OTHER_REQUEST_THREADS` (:mod:`fedlora.flower_internals.link_threads`), so
held pulls never take a thread that Flower's other requests need. Each change is checked
against the installed Flower first: if its handlers or LinkStates differ from those of the
releases fedlora was checked against (:mod:`fedlora.flower_internals.versions`), nothing
changes and a warning is logged.
"""

from __future__ import annotations

import inspect
import logging
import math
import threading
import time
from collections.abc import Callable, Hashable, Iterable
from types import ModuleType
from typing import Any, TypeVar

from fedlora.errors import ConfigError
from fedlora.flower_internals.versions import checked_flower

logger = logging.getLogger(__name__)

DEFAULT_HOLD_S = 1.0
"""How long the SuperLink holds a pull that finds nothing (``fedlora deploy superlink``)."""
MAX_HOLD_S = 10.0
"""Longest hold accepted: well inside the 30 s request timeout of Flower's HTTP clients."""
DEFAULT_MAX_HELD = 256
"""Pulls held at once: one per SuperNode, plus the ServerApp's, for federations up to ~250 sites."""
OTHER_REQUEST_THREADS = 24
"""Request threads kept for everything but held pulls (as many as 40 - 16 left them before)."""
FLOWER_REQUEST_THREADS = 40
"""AnyIO's default thread pool, which serves Flower's SuperLink handlers unless resized."""
RECHECK_S = 0.5
"""A held pull looks again this often even without a wake-up: Flower makes some answers
without a store (an error reply for a node that has gone offline)."""
OBJECTS = "objects"
"""The :class:`MessageSignal` key of every object content stored."""

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
    """Counts what the SuperLink has stored, per addressee, and wakes whoever waits for it.

    A message counts for its destination node (``dst_node_id``: a SuperNode for an
    instruction, the SuperLink's own node id for a reply to the ServerApp), an object's
    content for :data:`OBJECTS`. A held pull waits for its own key only, on a condition of
    that key's own (all share one lock), so a store wakes the pulls waiting for it and no
    other: with hundreds of held pulls, one store does not wake every one of them.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stored: dict[Hashable, int] = {}
        self._waiting: dict[Hashable, threading.Condition] = {}

    def notify(self, key: Hashable) -> None:
        """Something for ``key`` has been stored: wake the pulls that wait for it."""
        with self._lock:
            self._stored[key] = self._stored.get(key, 0) + 1
            waiting = self._waiting.get(key)
            if waiting is not None:
                waiting.notify_all()

    def count(self, key: Hashable) -> int:
        """Stores for ``key`` so far (compare with a later count to see whether one came)."""
        with self._lock:
            return self._stored.get(key, 0)

    def wait_after(self, key: Hashable, count: int, timeout: float) -> bool:
        """Wait up to ``timeout`` s for a store for ``key`` after ``count``; whether one came."""
        with self._lock:
            waiting = self._waiting.setdefault(key, threading.Condition(self._lock))
            return waiting.wait_for(lambda: self._stored.get(key, 0) != count, timeout)


class PullHold:
    """Holds pulls that find nothing until a message is stored or ``hold_s`` has passed.

    Parameters
    ----------
    signal : MessageSignal
        Notified by the SuperLink's stores: each message for its destination node, each
        object's content for :data:`OBJECTS` (:func:`notify_on_stores`).
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
        *,
        waits_for: Hashable,
        ready: Callable[[_Response], bool] | None = None,
    ) -> _Response:
        """``ask()``; while it finds nothing, wait for a store for ``waits_for`` and ask again.

        Parameters
        ----------
        ask : callable
            The pull itself (Flower's handler); asked again after each wake-up.
        found : callable
            Whether an answer holds what the puller waits for.
        waits_for : hashable
            The :class:`MessageSignal` key of what the puller waits for (its node id).
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
        stored = self.signal.count(waits_for)  # before asking: a store meanwhile wakes us
        answer = ask()
        is_ready = ready or (lambda _: True)
        if self.hold_s == 0 or (found(answer) and is_ready(answer)):
            return answer
        if not self._slots.acquire(blocking=False):
            return answer
        try:
            deadline = time.monotonic() + self.hold_s
            while not found(answer):
                if not self._wait(waits_for, stored, deadline):
                    return answer
                stored = self.signal.count(waits_for)
                answer = ask()
            while True:
                objects = self.signal.count(OBJECTS)
                if is_ready(answer) or not self._wait(OBJECTS, objects, deadline):
                    return answer
        finally:
            self._slots.release()

    def _wait(self, key: Hashable, stored: int, deadline: float) -> bool:
        """Wait for a store for ``key`` after ``stored`` (or a recheck); ``False``: hold over."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        self.signal.wait_after(key, stored, min(remaining, self.recheck_s))
        return True


def _link_state_classes() -> list[type[Any]]:
    from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState
    from flwr.server.superlink.linkstate.sql_linkstate import SqlLinkState

    return [InMemoryLinkState, SqlLinkState]


def _object_store_classes() -> list[type[Any]]:
    from flwr.supercore.object_store.in_memory_object_store import InMemoryObjectStore
    from flwr.supercore.object_store.sql_object_store import SqlObjectStore

    return [InMemoryObjectStore, SqlObjectStore]


_StoredFor = Callable[[tuple[Any, ...], dict[str, Any], Any], Hashable | None]
"""From a store's arguments and result: the key it stored for, ``None`` when it refused."""


def _notify_after(cls: type[Any], name: str, signal: MessageSignal, key: _StoredFor) -> None:
    method = getattr(cls, name)
    if getattr(method, "__fedlora_notifies__", None) is not None:
        method = method.__wrapped__  # changed before in this process: the new signal replaces it

    def call_and_notify(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = method(self, *args, **kwargs)
        stored_for = key(args, kwargs, result)
        if stored_for is not None:
            signal.notify(stored_for)
        return result

    call_and_notify.__fedlora_notifies__ = signal  # type: ignore[attr-defined]
    call_and_notify.__doc__ = method.__doc__
    call_and_notify.__wrapped__ = method  # type: ignore[attr-defined]
    setattr(cls, name, call_and_notify)


def _addressee(args: tuple[Any, ...], kwargs: dict[str, Any], result: Any) -> Hashable | None:
    """The destination node of a message the LinkState stored (``None``: it refused it)."""
    message = args[0] if args else kwargs["message"]
    return message.metadata.dst_node_id if result[0] else None


def _any_object(args: tuple[Any, ...], kwargs: dict[str, Any], result: Any) -> Hashable:
    return OBJECTS


def notify_on_stores(
    signal: MessageSignal,
    state_classes: Iterable[type[Any]] | None = None,
    store_classes: Iterable[type[Any]] | None = None,
) -> bool:
    """Make the SuperLink's stores notify ``signal``: messages and the objects they carry.

    Each LinkState notifies after it stores a message with its object tree (both the ServerApp's
    instructions and the SuperNodes' replies are stored that way in the checked Flower releases),
    for the message's destination node; each ObjectStore after it stores an object's content, for
    :data:`OBJECTS`. Notifying after the store returns, not inside it, means a woken pull finds the
    message's object tree registered: Flower deletes a pulled message whose tree it cannot find.

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
        _notify_after(state_class, "store_message_and_object_tree", signal, _addressee)
    for store_class in stores:
        _notify_after(store_class, "put", signal, _any_object)
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
        logger.warning(
            "this Flower's SuperLink pulls differ from %s's; pulls not held", checked_flower()
        )
        return False
    if hold.hold_s == 0 or not notify_on_stores(hold.signal, state_classes, store_classes):
        return False
    assert fleet_pull is not None and runtime_pull is not None
    from flwr.common.constant import SUPERLINK_NODE_ID

    def held_fleet_pull(request: Any, state: Any, store: Any) -> Any:
        return hold.pull(
            lambda: fleet_pull(request=request, state=state, store=store),
            lambda answer: len(answer.messages_list) > 0,
            waits_for=request.node.node_id,
            ready=lambda answer: _objects_stored(store, answer),
        )

    def held_runtime_pull(request: Any, state: Any, task: Any) -> Any:
        if not request.message_ids:
            return runtime_pull(request, state, task)
        return hold.pull(
            lambda: runtime_pull(request, state, task),
            lambda answer: len(answer.messages_list) > 0,
            waits_for=SUPERLINK_NODE_ID,  # every reply to a ServerApp is addressed to it
            ready=lambda answer: _objects_stored(state.object_store, answer),
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

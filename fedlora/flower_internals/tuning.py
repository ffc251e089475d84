"""Shorter fixed waits in Flower's deployment runtime, for fast rounds.

Flower's deployment runtime polls with fixed waits tuned for long rounds over a WAN: a
SuperNode sleeps 3 s after every pull that finds no message and 0.5 s between checks for its
ClientApp's reply, and every pull of a message's objects (its records) that comes before the
objects have arrived backs off 1 s first. A fedlora round is one exchange with
each site (two for the last round), each crossing SuperLink -> SuperNode -> ClientApp and
back, so on a small model those waits, not training, set the pace of a round
(docs/benchmarks.md, ``bench/deployment_overhead.py``).

Each function here changes one of those waits in the calling process only, after checking that the
installed Flower waits the way the releases in :mod:`fedlora.flower_internals.versions` do; if it
does not, it changes nothing, logs a warning and returns ``False``, so a Flower upgrade costs speed,
never correctness. The object pulls keep their shape (exponential back-off up to Flower's cap) with
a shorter first wait; the SuperNode's idle pulls and a worker process's asks for tasks back off from
a short first wait after each message up to the poll interval (:class:`PollBackoff`), since a
round's next message follows a reply within the coordinator's aggregation time.
"""

from __future__ import annotations

import inspect
import logging
import math
import threading
import time
from types import ModuleType
from typing import Any

from fedlora.errors import ConfigError
from fedlora.flower_internals.versions import checked_flower

logger = logging.getLogger(__name__)

DEFAULT_POLL_INTERVAL_S = 0.2
MIN_POLL_INTERVAL_S = 0.01
MAX_POLL_INTERVAL_S = 3.0
DEFAULT_PULL_BACKOFF_S = 0.01
NEARBY_PULL_BACKOFF_CAP_S = 0.05
"""Longest wait between object pull retries of the warm worker and of the ServerApp."""
FIRST_IDLE_POLL_S = 0.02
"""A node's first wait after activity before it asks the SuperLink again (then doubling)."""
HELD_PULL_S = 0.5
"""A pull from the SuperLink that took this long was held there
(:mod:`fedlora.flower_internals.link_hold`)."""
FIRST_TASK_POLL_S = 0.01
"""The warm worker's first wait after a task before it asks its node again (then doubling)."""
LOCAL_CHECK_S = 0.01
"""Between a node's checks of its own state for a reply: no request, only a look-up."""
REPLY_SIGNAL_WAIT_S = 0.1
"""Longest wait for a reply signal from a worker in the node's process before a check."""
_SUPERNODE_IDLE_S = 3
_SUPERNODE_LOCAL_S = 0.5
_SUPERNODE_WAITS = tuple(f"time.sleep({s})" for s in (_SUPERNODE_IDLE_S, _SUPERNODE_LOCAL_S))
"""The waits of the checked Flower's SuperNode loop (idle pull, reply check) that are shortened."""
_BACKOFF_KEYS = ("initial_backoff", "backoff_cap")
FLOWER_HEARTBEAT_INTERVAL_S = 30.0
"""The checked Flower's node heartbeat interval; the SuperLink accepts 10 to 1800 s."""
MIN_HEARTBEAT_INTERVAL_S = 10.0
MAX_HEARTBEAT_INTERVAL_S = 1800.0
_HEARTBEAT_USES = {
    "flwr.supernode.fleet_http_connection": "heartbeat_interval=HEARTBEAT_DEFAULT_INTERVAL",
    "flwr.supercore.heartbeat": "HEARTBEAT_DEFAULT_INTERVAL - HEARTBEAT_CALL_TIMEOUT",
}
"""Where the checked Flower's SuperNode reads its heartbeat interval: what it tells the SuperLink
(activation and every heartbeat) and how often it sends one."""


def check_poll_interval(seconds: float) -> float:
    """Validate a poll interval in seconds.

    Raises
    ------
    ConfigError
        Unless ``MIN_POLL_INTERVAL_S <= seconds <= MAX_POLL_INTERVAL_S``.
    """
    if not math.isfinite(seconds) or not MIN_POLL_INTERVAL_S <= seconds <= MAX_POLL_INTERVAL_S:
        raise ConfigError(
            f"poll interval must be between {MIN_POLL_INTERVAL_S} and {MAX_POLL_INTERVAL_S} s "
            f"(Flower's own idle wait is 3 s), got {seconds}"
        )
    return seconds


class PollBackoff:
    """Waits between polls that start short after activity and double up to a cap.

    A federation's messages come in bursts: the next one follows a reply within the
    coordinator's aggregation time, then nothing may come for minutes. Polling at
    ``first`` seconds right after activity and doubling up to ``cap`` catches the next
    message of a round within a fraction of the cap, while an idle node still polls only
    once per ``cap`` seconds.
    """

    def __init__(self, *, first: float, cap: float) -> None:
        self.cap = check_poll_interval(cap)
        self.first = min(check_poll_interval(first), self.cap)
        self._next = self.first

    def next_wait(self) -> float:
        """The wait before the next poll; each call doubles the following one, up to ``cap``."""
        wait = self._next
        self._next = min(self._next * 2, self.cap)
        return wait

    def reset(self) -> None:
        """Something happened: poll again soon."""
        self._next = self.first


class SupernodeWaits:
    """Stands in for the ``time`` module inside Flower's SuperNode loop.

    The loop sleeps 3 s after a pull from the SuperLink that found no message (:class:`PollBackoff`
    from ``first_idle`` up to ``idle_cap`` instead) and 0.5 s between checks of its own in-memory
    state for the ClientApp's reply (``local_check`` instead: a lock and a dictionary look-up, no
    request). A reply wait means a message is being served, so it also restarts the idle back-off:
    the next message of the round is due soon. An empty pull that took ``HELD_PULL_S`` or more was
    held by a SuperLink that answers when a message comes
    (:mod:`fedlora.flower_internals.link_superlink`): the node then asks again after ``first_idle``
    seconds, leaving the back-off where it was, since that SuperLink does the waiting. Any other
    sleep is capped at ``idle_cap``. Everything else (``time.time``, ``time.monotonic``, ...) is the
    real ``time`` module.
    """

    def __init__(
        self,
        idle_cap: float,
        *,
        first_idle: float = FIRST_IDLE_POLL_S,
        local_check: float = LOCAL_CHECK_S,
        replies: threading.Event | None = None,
    ) -> None:
        self.idle = PollBackoff(first=first_idle, cap=idle_cap)
        self.local_check = min(check_poll_interval(local_check), self.idle.cap)
        self.replies = replies
        self._awake_since = time.monotonic()

    def sleep(self, seconds: float) -> None:
        """Sleep the shortened wait that stands for Flower's ``seconds``.

        With ``replies`` (set by a warm worker in this process when it has stored a reply),
        a reply check waits on that event for up to ``REPLY_SIGNAL_WAIT_S`` instead: a
        check every ``local_check`` seconds would take the interpreter from the training
        thread a hundred times a second.
        """
        if seconds == _SUPERNODE_LOCAL_S:
            self.idle.reset()
            if self.replies is not None:
                self.replies.wait(REPLY_SIGNAL_WAIT_S)
                self.replies.clear()
            else:
                time.sleep(self.local_check)
        elif seconds == _SUPERNODE_IDLE_S:
            held = time.monotonic() - self._awake_since >= HELD_PULL_S
            time.sleep(self.idle.first if held else self.idle.next_wait())
        else:
            time.sleep(min(seconds, self.idle.cap))
        self._awake_since = time.monotonic()

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def shorten_supernode_polls(
    cap: float, module: ModuleType | None = None, *, replies: threading.Event | None = None
) -> bool:
    """Replace the fixed sleeps of Flower's SuperNode loop by :class:`SupernodeWaits`.

    Parameters
    ----------
    cap : float
        Longest wait between pulls from the SuperLink, in seconds.
    module : ModuleType, optional
        The module to change; Flower's ``flwr.supernode.start_client_internal`` by default.
    replies : threading.Event, optional
        Set by a warm worker in this process whenever it has stored a reply.

    Returns
    -------
    bool
        Whether the sleeps were shortened.
    """
    check_poll_interval(cap)
    if module is None:
        import flwr.supernode.start_client_internal

        module = flwr.supernode.start_client_internal
    source = inspect.getsource(module)
    if getattr(module, "time", None) is not time or not all(
        wait in source for wait in _SUPERNODE_WAITS
    ):
        logger.warning(
            "this Flower's SuperNode does not poll as %s's does; keeping its own poll intervals",
            checked_flower(),
        )
        return False
    waits = SupernodeWaits(cap, replies=replies)
    setattr(module, "time", waits)  # noqa: B010 -- mypy: no such attribute
    return True


def shorten_pull_backoff(initial: float = DEFAULT_PULL_BACKOFF_S, cap: float | None = None) -> bool:
    """Make the first retry of an object pull come after ``initial`` seconds, not 1 s.

    Changes the keyword defaults of Flower's ``pull_objects`` and
    ``pull_and_inflate_object_from_tree`` (every pull of a message's objects: SuperNode,
    ClientApp, ServerApp), in this process. Later retries still double, up to Flower's cap
    or ``cap`` seconds, whichever is shorter: a process pulling from a store beside it (the
    warm worker from its node, the ServerApp from its SuperLink) waits for objects that are
    already on their way, and a retry due after the object arrived is time lost.

    Returns
    -------
    bool
        Whether the back-off was shortened.
    """
    check_poll_interval(initial)
    if cap is not None:
        check_poll_interval(cap)
    from flwr.supercore.inflatable import inflatable_utils

    functions = (inflatable_utils.pull_objects, inflatable_utils.pull_and_inflate_object_from_tree)
    defaults = [function.__kwdefaults__ for function in functions]
    if not all(d is not None and all(k in d for k in _BACKOFF_KEYS) for d in defaults):
        logger.warning(
            "this Flower pulls objects differently from %s; keeping its back-off", checked_flower()
        )
        return False
    for default in defaults:
        assert default is not None  # checked above; for mypy
        default["initial_backoff"] = min(float(default["initial_backoff"]), initial)
        if cap is not None:
            default["backoff_cap"] = min(float(default["backoff_cap"]), cap)
    return True


def check_heartbeat_interval(seconds: float) -> float:
    """Validate a node heartbeat interval in seconds (the range Flower's SuperLink accepts).

    Raises
    ------
    ConfigError
        Unless ``MIN_HEARTBEAT_INTERVAL_S <= seconds <= MAX_HEARTBEAT_INTERVAL_S``.
    """
    if not math.isfinite(seconds) or not (
        MIN_HEARTBEAT_INTERVAL_S <= seconds <= MAX_HEARTBEAT_INTERVAL_S
    ):
        raise ConfigError(
            f"heartbeat-interval must be between {MIN_HEARTBEAT_INTERVAL_S:g} and "
            f"{MAX_HEARTBEAT_INTERVAL_S:g} s (the range the SuperLink accepts), got {seconds:g}"
        )
    return seconds


def set_node_heartbeat_interval(seconds: float) -> bool:
    """Make this process's SuperNode declare and keep a ``seconds`` heartbeat interval.

    The SuperLink counts a node offline after two missed intervals, and only then lets a
    restarted node with the same key back in: Flower's fixed 30 s means a crashed site waits
    up to a minute to rejoin. The SuperNode tells the SuperLink its interval when it
    activates and in every heartbeat, and sends one every ``0.7-0.9 x (interval - 5 s)``.

    Returns
    -------
    bool
        Whether the interval was changed (``False``, with a warning, when the installed
        Flower does not read it the way the checked releases do).

    Raises
    ------
    ConfigError
        For an interval outside Flower's accepted range.
    """
    check_heartbeat_interval(seconds)
    import importlib

    modules = [importlib.import_module(name) for name in _HEARTBEAT_USES]
    for module, use in zip(modules, _HEARTBEAT_USES.values(), strict=True):
        value = getattr(module, "HEARTBEAT_DEFAULT_INTERVAL", None)
        if not isinstance(value, int | float) or use not in inspect.getsource(module):
            logger.warning(
                "this Flower's SuperNode does not read its heartbeat interval as %s's "
                "does; keeping its own",
                checked_flower(),
            )
            return False
    for module in modules:
        setattr(module, "HEARTBEAT_DEFAULT_INTERVAL", seconds)  # noqa: B010
    return True

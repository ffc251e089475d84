"""The SuperNode wakes its warm worker thread as soon as it has a ClientApp task for it.

The warm worker (:mod:`fedlora.flower_internals.node_worker`) learns of a task by asking the node's
Runtime API; between asks it waits, and a wait that has backed off to the poll interval delays the
round's next message by up to that interval (0.2 s by default, measured on messages whose work takes
0.05 s). The worker runs in the node's own process (:mod:`fedlora.flower_internals.node_supernode`),
so the node's state signals a :class:`TaskSignal` whenever it creates a task, and the worker waits
on that signal instead of sleeping: it asks at once. The signal also hands the worker the node's
state, which :class:`fedlora.flower_internals.node_local_runtime.LocalRuntimeClient` calls.

The signal is only a hint: the worker still acquires the task through Flower's Runtime
handlers, and still asks every poll interval without one, so a missed signal costs speed,
never a task.
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
from typing import Any

from fedlora.flower_internals.versions import checked_flower

logger = logging.getLogger(__name__)


class TaskSignal:
    """Set by the node's state when it creates a task; waited on by the worker."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._state: Any = None

    @property
    def state(self) -> Any:
        """The node state that created the last task (``None`` before the first)."""
        return self._state

    def notify(self, state: Any) -> None:
        """A task was created in ``state``."""
        self._state = state
        self._event.set()

    def wait(self, timeout: float | None) -> bool:
        """Wait up to ``timeout`` seconds (forever for ``None``) for a task; clear the signal.

        Returns
        -------
        bool
            Whether a task was created since the last wait.
        """
        notified = self._event.wait(timeout)
        self._event.clear()
        return notified


def notify_on_new_tasks(signal: TaskSignal, state_class: type | None = None) -> bool:
    """Make the SuperNode's state notify ``signal`` after each task it creates.

    Parameters
    ----------
    signal : TaskSignal
        What the worker waits on.
    state_class : type, optional
        The node state class to change; Flower's ``InMemoryNodeState`` by default.

    Returns
    -------
    bool
        Whether task creation now notifies ``signal`` (``False``, with a warning, when the
        installed Flower's node state creates tasks differently from the checked releases').
    """
    if state_class is None:
        from flwr.supernode.nodestate.in_memory_nodestate import InMemoryNodeState

        state_class = InMemoryNodeState
    create = getattr(state_class, "create_task", None)
    if not callable(create) or "task_type" not in inspect.signature(create).parameters:
        logger.warning(
            "this Flower's SuperNode creates tasks differently from %s's; "
            "the warm worker keeps asking for tasks on its own",
            checked_flower(),
        )
        return False

    @functools.wraps(create)
    def create_and_notify(self: Any, *args: Any, **kwargs: Any) -> Any:
        task_id = create(self, *args, **kwargs)
        if task_id is not None:
            signal.notify(self)
        return task_id

    setattr(state_class, "create_task", create_and_notify)  # noqa: B010 -- a method of Flower's
    return True

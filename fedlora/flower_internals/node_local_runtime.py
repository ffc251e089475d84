"""A SuperNode's Runtime API called inside the node's own process, without HTTP.

Flower's SuperNode hands each message to its ClientApp through its Runtime API, a FastAPI
server on the node's loopback: one HTTP request per step (acquire the task, pull its input with the
whole FAB, pull the message and each of its objects, confirm, push the reply and each of its
objects, push the task output, heartbeats), about fifteen per message, each costing both processes a
few milliseconds of CPU and the round their latency. The warm worker thread
(:mod:`fedlora.flower_internals.node_worker`, started by
:mod:`fedlora.flower_internals.node_supernode`) runs in the node's process, so
:class:`LocalRuntimeClient` calls the functions behind those routes directly: the SuperNode's own
Runtime handlers on the node's own state, with the same protobuf requests and responses (each copied
through its wire encoding, so neither side shares a mutable object with the other) and the same
task-token check. The task protocol of
``flwr-clientapp`` (``pull_task_input``, ``push_message``, ``push_task_output``) runs on it
unchanged.

:func:`local_runtime_available` checks that the installed Flower still has what this calls;
the node otherwise runs its worker as a separate process over HTTP, as before.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any, TypeVar, cast

from google.protobuf.message import Message as ProtoMessage

from fedlora.errors import FedloraError

logger = logging.getLogger(__name__)

_NODE_HANDLERS = (
    "acquire_task",
    "pull_task_input",
    "push_task_output",
    "pull_messages",
    "push_messages",
    "push_object",
    "pull_object",
    "confirm_message_received",
)
_STATE_METHODS = ("get_task_by_token", "acknowledge_task_heartbeat")

ResponseT = TypeVar("ResponseT", bound=ProtoMessage)


class RuntimeTaskError(FedloraError):
    """The node no longer knows the task a token was issued for (finished or expired)."""


def _copy(message: ResponseT) -> ResponseT:
    copy = type(message)()
    copy.ParseFromString(message.SerializeToString())
    return cast(ResponseT, copy)


def local_runtime_available() -> bool:
    """Whether the installed Flower's SuperNode has the Runtime handlers this module calls."""
    try:
        from flwr.supercore.servicer.runtime import runtime_handlers as core
        from flwr.supernode.nodestate.in_memory_nodestate import InMemoryNodeState
        from flwr.supernode.servicer.runtime import runtime_handlers as node
    except ImportError:
        return False
    handlers_ok = all(callable(getattr(node, name, None)) for name in _NODE_HANDLERS)
    state_ok = all(callable(getattr(InMemoryNodeState, name, None)) for name in _STATE_METHODS)
    heartbeat = getattr(core, "send_task_heartbeat", None)
    return (
        handlers_ok
        and state_ok
        and callable(heartbeat)
        and list(inspect.signature(heartbeat).parameters) == ["request", "state", "task"]
    )


class LocalRuntimeClient:
    """The methods of Flower's ``RuntimeHttpClient`` that a ClientApp task uses, in process.

    Parameters
    ----------
    state : NodeState
        The SuperNode's state (the one its fleet loop stores messages in).
    token : str, optional
        The task token from :meth:`AcquireTask`; every call but that one needs it.
    """

    def __init__(self, state: Any, token: str | None = None) -> None:
        from flwr.supercore.servicer.runtime import runtime_handlers as core
        from flwr.supernode.servicer.runtime import runtime_handlers as node

        self._state = state
        self._token = token
        self._node = node
        self._core = core

    def _task(self) -> Any:
        task = self._state.get_task_by_token(self._token) if self._token else None
        if task is None:
            raise RuntimeTaskError("the node has no task for this token (finished or expired)")
        return task

    def _call(self, handler: Callable[..., ResponseT], request: ProtoMessage) -> ResponseT:
        return _copy(handler(_copy(request), self._state, self._task()))

    def AcquireTask(self, request: Any) -> Any:  # noqa: N802 -- Flower's method names
        """Claim the oldest pending task the request supports."""
        return _copy(self._node.acquire_task(_copy(request), self._state))

    def PullTaskInput(self, request: Any) -> Any:  # noqa: N802
        """The task's context, run and FAB; marks the task running."""
        return self._call(self._node.pull_task_input, request)

    def PullMessages(self, request: Any) -> Any:  # noqa: N802
        """The task's message and its object tree."""
        return self._call(self._node.pull_messages, request)

    def PullObject(self, request: Any) -> Any:  # noqa: N802
        """One object of the message (``object_available`` is false until it has arrived)."""
        return self._call(self._node.pull_object, request)

    def ConfirmMessageReceived(self, request: Any) -> Any:  # noqa: N802
        """The message is held: the node may drop its copy of the objects."""
        return self._call(self._node.confirm_message_received, request)

    def PushMessages(self, request: Any) -> Any:  # noqa: N802
        """Store the reply and learn which of its objects to push."""
        return self._call(self._node.push_messages, request)

    def PushObject(self, request: Any) -> Any:  # noqa: N802
        """Store one object of the reply."""
        return self._call(self._node.push_object, request)

    def PushTaskOutput(self, request: Any) -> Any:  # noqa: N802
        """Finish the task with its status and the updated context."""
        return self._call(self._node.push_task_output, request)

    def SendTaskHeartbeat(self, request: Any) -> Any:  # noqa: N802
        """Keep the claimed task alive."""
        return self._call(self._core.send_task_heartbeat, request)

    def task_heartbeat(self) -> bool:
        """One task heartbeat, for Flower's ``HeartbeatSender``.

        Flower's own heartbeat function interrupts its process (SIGINT) when the node has
        dropped the task; here that process is the node itself, so a dropped task is logged
        and the heartbeats go on failing until the task ends, without stopping the node.
        """
        from flwr.proto.runtime_pb2 import SendTaskHeartbeatRequest

        try:
            succeeded = bool(self.SendTaskHeartbeat(SendTaskHeartbeatRequest()).success)
        except RuntimeTaskError:
            succeeded = False
        if not succeeded:
            logger.warning("the node no longer accepts this task's heartbeats")
        return succeeded

    def close(self) -> None:
        """Nothing to release (no connection)."""

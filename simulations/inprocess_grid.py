"""A Flower ``Grid`` whose sites run in this process, one after another, without Ray.

``fedlora.simulations.runner.simulate(..., engine="inprocess")`` uses it: the same ServerApp round
loop and the same ClientApp as Flower's simulation engine and a deployment, but every message is
handled at once by calling the ClientApp, each site keeping its own ``Context`` (node config and
state) across messages. Sites run one after another on this process's device; Ray's start-up
(seconds) and its per-actor processes are gone. Meant for users' integration tests and this
project's own: a test federation of tiny models costs its training time and little else.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from flwr.app import Context, Error, Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

logger = logging.getLogger(__name__)

ClientAppCallable = Callable[[Message, Context], Message]

_FIRST_NODE_ID = 1001
_RUN_ID = 1


class InProcessGrid(Grid):
    """Sites ``0..sites-1`` as nodes; ``push_messages`` runs their ClientApp immediately.

    Parameters
    ----------
    client_app
        Called as ``client_app(message, context)`` (a ``flwr.clientapp.ClientApp``).
    sites
        Number of nodes; node ``i`` has node config ``partition-id = i``, ``num-partitions``.
    """

    def __init__(self, client_app: ClientAppCallable, sites: int) -> None:
        self._client_app = client_app
        self._contexts = {
            _FIRST_NODE_ID + index: Context(
                run_id=_RUN_ID,
                node_id=_FIRST_NODE_ID + index,
                node_config={"partition-id": index, "num-partitions": sites},
                state=RecordDict(),
                run_config={},
            )
            for index in range(sites)
        }
        self._replies: dict[str, Message] = {}
        self._run = Run.create_empty(_RUN_ID)
        _claim_task_identity()

    def set_run(self, run: Run) -> None:  # noqa: D102 -- Grid's
        self._run = run

    @property
    def run(self) -> Run:  # noqa: D102 -- Grid's
        return self._run

    def create_message(  # noqa: D102 -- Grid's
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(
            content=content,
            dst_node_id=dst_node_id,
            message_type=message_type,
            group_id=group_id,
            ttl=ttl,
        )

    def get_node_ids(self) -> Iterable[int]:  # noqa: D102 -- Grid's
        return list(self._contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Run each message's destination ClientApp now; return the message IDs."""
        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = message.object_id
            context = self._contexts[message.metadata.dst_node_id]
            try:
                reply = self._client_app(message, context)
            except Exception as error:  # as Flower's engines: an error reply, not a crash
                logger.exception("the ClientApp raised an exception")
                reason = f"{type(error)}:<'{error}'>"
                code = ErrorCode.CLIENT_APP_RAISED_EXCEPTION
                reply = Message(Error(code=code, reason=reason), reply_to=message)
            self._replies[message.metadata.message_id] = reply
            ids.append(message.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """The replies to ``message_ids`` (each returned once)."""
        return [self._replies.pop(mid) for mid in list(message_ids) if mid in self._replies]

    def send_and_receive(  # noqa: D102 -- Grid's
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))


def _claim_task_identity() -> None:
    """Give this process the identity a ServerApp process has, unless it has one.

    Flower stamps every new ``Message`` with the process's task identity, which its own
    engines set; a plain Python process has none.
    """
    if TaskIdentity._run_id is None:  # Flower offers no "is it set" query
        TaskIdentity.task_id = 1
        TaskIdentity.run_id = _RUN_ID
        TaskIdentity.node_id = 0

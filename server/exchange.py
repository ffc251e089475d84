"""One exchange with the sites: a message to each, and each reply parsed, bound and filed.

Every reply is parsed once, on arrival, against the reply schema
(:func:`fedlora.replies.parse_reply`) and bound to the node it came from
(:class:`fedlora.server.site_binding.SiteBinding`); a reply that breaks the schema or speaks for
another site is dropped from the round (logged, and recorded under ``errors``) and the run goes
on. Replies that are errors (a site refusing, crashing or timing out) are logged with the site
and reason and recorded the same way. Everything after that reads the parsed
:class:`~fedlora.replies.SiteReply` only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from fedlora.config import RunConfig
from fedlora.errors import FedloraError
from fedlora.progress import Phase, RoundObserver
from fedlora.replies import ReplyRejectedError, SiteReply, parse_reply
from fedlora.secure_messages import MESSAGE_TYPE
from fedlora.server.reply_polls import ReplyPolls
from fedlora.server.rundir import RunDirectory
from fedlora.server.site_binding import SiteBinding
from fedlora.server.site_receipts import SiteReceipts

logger = logging.getLogger(__name__)


@dataclass
class PhaseResult:
    """What one exchange with the sites brought back, by site."""

    replies: dict[str, SiteReply] = field(default_factory=dict)
    """The parsed replies that did not decline, by the site bound to their node."""
    errors: list[dict[str, str]] = field(default_factory=list)
    bytes_sent: dict[str, int] = field(default_factory=dict)
    bytes_received: dict[str, int] = field(default_factory=dict)
    privacy: dict[str, dict[str, Any]] = field(default_factory=dict)
    refused: dict[str, dict[str, Any]] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)
    evaluations: dict[str, dict[str, float]] = field(default_factory=dict)
    """Held-out metrics per site: an evaluate reply's, or those a train reply carried."""
    secure_aggregation: dict[str, Any] | None = None
    """A secure round's participation, bytes and seconds (``fedlora.server.secure_round``)."""


def wait_for_nodes(grid: Grid, expected: int, timeout: float) -> list[int]:
    """Wait until ``expected`` nodes are connected and return their ids (sorted).

    Raises
    ------
    FedloraError
        When fewer than ``expected`` nodes connect within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        node_ids = sorted(grid.get_node_ids())
        if len(node_ids) >= expected:
            return node_ids[:expected] if expected else node_ids
        if time.monotonic() > deadline:
            raise FedloraError(
                f"only {len(node_ids)} of {expected} sites connected within {timeout:.0f} s"
            )
        time.sleep(0.2)


class SiteExchange:
    """The coordinator's side of the conversation with the sites, across rounds.

    Parameters
    ----------
    grid
        Flower's grid (simulation or deployment).
    config
        The run configuration (``round-timeout``).
    observer
        Progress hooks, told of every phase and reply.
    roster
        Node id -> enrolled site name, or ``None`` (see :class:`SiteBinding`).
    """

    def __init__(
        self,
        grid: Grid,
        config: RunConfig,
        observer: RoundObserver,
        roster: Mapping[int, str] | None = None,
    ) -> None:
        self.grid = grid
        self.config = config
        self.observer = observer
        self.binding = SiteBinding(roster)
        """Which site each node speaks for (``roster``: node id -> enrolled site name)."""
        self.receipts = SiteReceipts()
        """Each site's last reported ledger length: a ledger that shrank is refused."""
        self.fastest_train_s: float | None = None
        """The fastest train exchange so far (push to last reply): when replies are due."""
        self._new_binding = False

    def exchange(
        self,
        node_ids: list[int],
        server_round: int,
        phase: Phase,
        *,
        content: RecordDict,
        size: int,
        run_dir: RunDirectory,
    ) -> PhaseResult:
        """Send ``content`` (``size`` bytes of adapter) to every node and collect the replies.

        Waits up to ``round-timeout`` seconds; a node that has not replied by then is recorded
        under ``errors``. New node bindings are written into ``run_dir``'s ``config.json``.
        """
        messages = [
            Message(
                content=content, dst_node_id=node_id, message_type=phase, group_id=str(server_round)
            )
            for node_id in node_ids
        ]
        message_ids = {
            mid: node for mid, node in zip(self.grid.push_messages(messages), node_ids, strict=True)
        }
        self.observer.on_phase(server_round=server_round, phase=phase, expected=len(node_ids))
        result = PhaseResult()
        for node_id in node_ids:
            result.bytes_sent[self.binding.name(node_id)] = size
        pending = set(message_ids)
        pushed = time.monotonic()
        deadline = pushed + self.config.round_timeout
        polls = ReplyPolls(self.fastest_train_s if phase == "train" else None)
        while pending and (now := time.monotonic()) < deadline:
            time.sleep(min(polls.next_wait(now - pushed), deadline - now))
            # One reply per message, taken in node order (a deterministic first use of names).
            pulled = {r.metadata.reply_to_message_id: r for r in self.grid.pull_messages(pending)}
            for message_id in sorted(pulled.keys() & pending, key=message_ids.__getitem__):
                polls.replied()
                pending.discard(message_id)
                self._accept(
                    pulled[message_id], message_ids[message_id], server_round, phase, result
                )
        if phase == "train" and not pending:
            took = time.monotonic() - pushed
            if self.fastest_train_s is None or took < self.fastest_train_s:
                self.fastest_train_s = took
        if self._new_binding:
            self._record_binding(run_dir)
        for message_id in pending:
            site = self.binding.name(message_ids[message_id])
            reason = f"no reply within {self.config.round_timeout:.0f} s"
            logger.warning("round %d %s: site %s: %s", server_round, phase, site, reason)
            result.errors.append({"site": site, "phase": phase, "reason": reason})
            self.observer.on_reply(server_round=server_round, phase=phase, site=site, metrics=None)
        return result

    def _accept(
        self, reply: Message, node_id: int, server_round: int, phase: Phase, result: PhaseResult
    ) -> None:
        """Parse one reply, bind it to its node, and file it under that node's site."""
        if reply.has_error():
            site = self.binding.name(node_id)
            reason = (
                reply.error.reason.strip().splitlines()[-1] if reply.error.reason else "unknown"
            )
            logger.warning(
                "round %d %s: site %s replied with an error: %s", server_round, phase, site, reason
            )
            result.errors.append(
                {"site": site, "phase": phase, "reason": reason, "code": str(reply.error.code)}
            )
            self.observer.on_reply(server_round=server_round, phase=phase, site=site, metrics=None)
            return
        try:
            if reply.metadata.src_node_id != node_id:
                raise ReplyRejectedError(
                    f"the reply comes from node {reply.metadata.src_node_id}, not from node "
                    f"{node_id} it answers for"
                )
            parsed = parse_reply(reply, phase)
            self._new_binding |= self.binding.bind(node_id, parsed.site)
        except ReplyRejectedError as error:
            site = self.binding.name(node_id)
            logger.warning(
                "round %d %s: site %s (node %d): reply rejected: %s",
                server_round,
                phase,
                site,
                node_id,
                error,
            )
            reason = f"reply rejected: {error}"
            result.errors.append({"site": site, "phase": phase, "reason": reason})
            self.observer.on_reply(server_round=server_round, phase=phase, site=site, metrics=None)
            return
        site = parsed.site  # the name bound to this node
        result.bytes_sent[site] = result.bytes_sent.pop(
            f"node-{node_id}", result.bytes_sent.get(site, 0)
        )
        result.bytes_received[site] = parsed.received_bytes
        evaluation = parsed.metrics if phase == "evaluate" else parsed.evaluation
        if evaluation is not None:
            result.evaluations[site] = dict(evaluation)
        if parsed.status is not None:
            logger.warning(
                "round %d %s: site %s declined (%s): %s",
                server_round,
                phase,
                site,
                parsed.status["status"],
                parsed.status.get("reason", ""),
            )
            result.refused[site] = dict(parsed.status)
            self.observer.on_declined(
                server_round=server_round, phase=phase, site=site, status=parsed.status["status"]
            )
            return
        privacy = dict(parsed.privacy) if parsed.privacy is not None else None
        rolled_back = self.receipts.check(site, privacy, server_round)
        if rolled_back is not None:
            logger.warning(
                "round %d: site %s: update rejected: %s", server_round, site, rolled_back
            )
            result.rejected[site] = rolled_back
            if privacy is not None:
                result.privacy[site] = privacy  # the site did spend: keep its record
            self.observer.on_reply(server_round=server_round, phase=phase, site=site, metrics=None)
            return
        result.replies[site] = parsed
        if privacy is not None:
            result.privacy[site] = privacy
        self.observer.on_reply(
            server_round=server_round, phase=phase, site=site, metrics=dict(parsed.metrics)
        )

    def relay(
        self, contents: Mapping[int, RecordDict], server_round: int, stage: str, result: PhaseResult
    ) -> dict[str, Message]:
        """Send each node its own ``contents`` (a secure-aggregation stage), collect the replies.

        Replies are returned by the site bound to their node; an error reply, one from another
        node, or none within ``round-timeout`` is recorded in ``result.errors`` (phase
        ``secagg-<stage>``) and that site is left out: the protocol treats it as dropped.
        """
        phase = f"secagg-{stage}"
        messages = [
            Message(
                content=content,
                dst_node_id=node_id,
                message_type=MESSAGE_TYPE,
                group_id=str(server_round),
            )
            for node_id, content in contents.items()
        ]
        message_ids = dict(zip(self.grid.push_messages(messages), contents, strict=True))
        pending, replies = set(message_ids), {}
        pushed = time.monotonic()
        deadline = pushed + self.config.round_timeout
        polls = ReplyPolls(None)
        while pending and (now := time.monotonic()) < deadline:
            time.sleep(min(polls.next_wait(now - pushed), deadline - now))
            for reply in self.grid.pull_messages(pending):
                message_id = reply.metadata.reply_to_message_id
                if message_id not in pending:
                    continue
                polls.replied()
                pending.discard(message_id)
                node_id = message_ids[message_id]
                site = self.binding.name(node_id)
                if reply.has_error() or reply.metadata.src_node_id != node_id:
                    why = reply.error.reason if reply.has_error() else "a reply from another node"
                    reason = (why or "unknown").strip().splitlines()[-1]
                    logger.warning("round %d %s: site %s: %s", server_round, phase, site, reason)
                    result.errors.append({"site": site, "phase": phase, "reason": reason})
                    continue
                replies[site] = reply
        for message_id in pending:
            site = self.binding.name(message_ids[message_id])
            reason = f"no reply within {self.config.round_timeout:.0f} s"
            logger.warning("round %d %s: site %s: %s", server_round, phase, site, reason)
            result.errors.append({"site": site, "phase": phase, "reason": reason})
        return replies

    def _record_binding(self, run_dir: RunDirectory) -> None:
        """Write new node bindings into ``config.json``, so that a resumed run keeps them."""
        self._new_binding = False
        payload = run_dir.read_config()
        payload["site-nodes"] = self.binding.to_json()
        payload["sites"] = sorted({*payload.get("sites", []), *self.binding.names.values()})
        run_dir.write_config(payload)

"""The coordinator's side of a secure round: it learns only the sum of the sites' updates.

With ``secure-aggregation`` on, each site's train reply carries a key advertisement instead of
its adapter (``fedlora.clients.secure_site``). :class:`SecureAggregation` then drives the
protocol (:class:`fedlora.secagg.CoordinatorSession`) through three more exchanges with the
sites (:meth:`fedlora.server.exchange.SiteExchange.relay`): shares, masked inputs, unmasking.
The unmasked sum is checked (its example total and every value within the quantisation range,
:meth:`fedlora.secagg.Quantiser.decode`) and becomes one :class:`SecureSum` update, the
example-weighted mean, which the strategy aggregates like any update: FedAvg, FedProx,
FedAdam / FedYogi / FedAvgM and FFA-LoRA work on that mean. Fewer sites than the threshold at
any stage abandon the protocol: the round has no update, and ``min-fit`` / ``round-retries``
decide as for any short round. The round's ``metrics.jsonl`` line records the participation,
the protocol's bytes and its seconds under ``secure-aggregation``.

With central DP (``central-dp = fixed``) each site has clipped its own update before masking
(:mod:`fedlora.privacy.update_clipping`) and every site weighs the same, ``1 / sites``: the
example counts are replaced by 1 and the announced total by the federation's size, so no
site's rounding depends on who else takes part. The mean is decoded in float64 and handed to
:class:`~fedlora.strategies.central_dp.CentralDP` with the adapter the sites clipped from and
the clip norm; it adds the noise to it and records the release as in a plain round.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from flwr.app import RecordDict

from fedlora.adapters import AdapterState, pack_adapter, unpack_adapter
from fedlora.config import RunConfig
from fedlora.errors import AdapterError
from fedlora.secagg import CoordinatorSession, KeyRoster, Quantiser, SecAggError
from fedlora.secagg.quantise import TensorSlot, layout_of
from fedlora.secagg.wire import (
    decode_advertisement,
    decode_named,
    decode_unmask_reply,
    decode_vector,
    encode_listing,
    encode_named,
    encode_request,
)
from fedlora.secure_messages import make_stage, read_stage_reply
from fedlora.server.aggregation import BoundedUpdate
from fedlora.server.exchange import PhaseResult, SiteExchange
from fedlora.strategies import Strategy, SummedUpdate
from fedlora.strategies.validation import effective_bound, validate_update

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SecureSum(SummedUpdate):
    """The unmasked sum's mean, standing for the sites in ``sites`` (module docstring)."""


def accepted_sites(updates: list[BoundedUpdate]) -> int:
    """How many sites' updates ``updates`` hold (a :class:`SecureSum` counts its sites)."""
    return sum(len(u.sites) if isinstance(u, SummedUpdate) else 1 for u, _, _ in updates)


@dataclass
class _Round:
    """One secure round in progress: the protocol, the train exchange, the bytes each way."""

    session: CoordinatorSession
    trained: PhaseResult
    sent: Counter[str] = field(default_factory=Counter)
    received: Counter[str] = field(default_factory=Counter)

    def fault(self, site: str, phase: str, reason: str) -> None:
        self.trained.errors.append({"site": site, "phase": phase, "reason": reason})


class SecureAggregation:
    """One run's secure rounds (see the module docstring)."""

    def __init__(self, sites: SiteExchange, strategy: Strategy, config: RunConfig) -> None:
        self.sites, self.strategy, self.config = sites, strategy, config
        self.quantiser = Quantiser(config.secure_aggregation_range)
        self.central = config.central_dp != "off"
        """Central DP: the sites clipped their updates and weigh the same (module docstring)."""

    def updates(
        self, trained: PhaseResult, global_state: AdapterState, server_round: int, run_id: str
    ) -> list[BoundedUpdate]:
        """The round's one :class:`SecureSum` update, or none when the protocol is abandoned.

        Faults are recorded in ``trained`` (``errors`` with phase ``secure-aggregation``, the
        sum's rejection under ``rejected``); the protocol's record in
        ``trained.secure_aggregation``.
        """
        started = time.monotonic()
        reference = self.strategy.update_reference(global_state, global_state)
        layout = layout_of(reference)
        if self.central:  # decoded in float64: no cast rounds the mean before the noise
            layout = [TensorSlot(slot.name, slot.shape, torch.float64) for slot in layout]
        threshold = self.config.secure_aggregation_threshold
        length = sum(slot.size for slot in layout)
        session = CoordinatorSession(run_id, server_round, threshold, length, KeyRoster(None))
        state = _Round(session, trained)
        mean: AdapterState | None = None
        try:
            mean, count = self._protocol(state, layout)
        except SecAggError as error:
            logger.error("round %d: secure aggregation: %s", server_round, error)
            state.fault("*", "secure-aggregation", str(error))
        finally:
            for site, size in state.sent.items():
                trained.bytes_sent[site] = trained.bytes_sent.get(site, 0) + size
            for site, size in state.received.items():
                trained.bytes_received[site] = trained.bytes_received.get(site, 0) + size
            trained.secure_aggregation = {
                **session.counts(),
                "threshold": session.threshold,
                "aggregated": mean is not None,
                "protocol-bytes-sent": sum(state.sent.values()),
                "protocol-bytes-received": sum(state.received.values()),
                "protocol-seconds": round(time.monotonic() - started, 3),
            }
        if mean is None:
            return []
        bound = self.config.update_norm_bound
        cast = {name: tensor.to(reference[name].dtype) for name, tensor in mean.items()}
        try:
            norm = validate_update(reference, cast, norm_bound=bound)
        except AdapterError as error:
            logger.warning("round %d: the secure sum is rejected: %s", server_round, error)
            trained.rejected["secure-sum"] = str(error)
            return []
        if not self.central:
            update = SecureSum("secure-sum", cast, count, sites=session.masked)
            return [(update, norm, effective_bound(reference, bound))]
        # What the sites clipped from: the global adapter as the wire delivered it.
        start = unpack_adapter(pack_adapter(reference, self.config.wire_dtype))
        clip_norm = self.config.central_clip_norm
        update = SecureSum("secure-sum", mean, count, session.masked, start, clip_norm)
        return [(update, norm, effective_bound(reference, bound))]

    def _protocol(self, state: _Round, layout: list[TensorSlot]) -> tuple[AdapterState, int]:
        session = state.session
        ads = {}
        for site, reply in state.trained.replies.items():
            try:
                ads[site] = decode_advertisement(reply.advertisement or b"")
            except SecAggError as error:
                session.refused[site] = f"unreadable key advertisement: {error}"
        examples = {site: reply.num_examples for site, reply in state.trained.replies.items()}
        if self.central:  # uniform weights 1 / sites, whoever takes part (update_clipping)
            examples = dict.fromkeys(examples, 1)
        fixed_total = self.config.sites if self.central else None
        broadcast = session.receive_advertisements(ads, examples, total=fixed_total)
        listed = encode_listing(session.total_examples, broadcast)
        answers = self._stage(state, "share", dict.fromkeys(session.advertised, listed))
        routed = session.route_shares(_decoded(answers, decode_named, session.refused))
        outgoing = {site: encode_named(shares) for site, shares in routed.items()}
        answers = self._stage(state, "mask", outgoing)
        length = session.length
        inputs = _decoded(answers, lambda data: decode_vector(data, length), session.refused)
        request = encode_request(session.receive_masked(inputs))
        answers = self._stage(state, "unmask", dict.fromkeys(session.masked, request))
        replies = _decoded(answers, decode_unmask_reply, session.refused)
        total = session.unmask({site: r for site, r in replies.items() if r.site == site})
        sites = len(session.masked)
        mean = self.quantiser.decode(total, layout, sites, session.weight_sum)
        return mean, sum(session.examples[site] for site in session.masked)

    def _stage(self, state: _Round, stage: str, payloads: Mapping[str, bytes]) -> dict[str, bytes]:
        """Send each site its payload; each answering site's payload, by site."""
        nodes = {site: node for node, site in self.sites.binding.names.items()}
        session, phase = state.session, f"secagg-{stage}"
        contents: dict[int, RecordDict] = {}
        for site, payload in payloads.items():
            contents[nodes[site]] = make_stage(stage, session.server_round, session.run_id, payload)
            state.sent[site] += len(payload)
        answers = {}
        replies = self.sites.relay(contents, session.server_round, stage, state.trained)
        for site, reply in replies.items():
            try:
                declared, payload = read_stage_reply(reply)
            except SecAggError as error:
                state.fault(site, phase, str(error))
                continue
            if declared != site:
                state.fault(site, phase, f"the reply speaks for {declared!r}")
                continue
            state.received[site] += len(payload)
            answers[site] = payload
        return answers


def _decoded(answers: Mapping[str, bytes], decode: Any, refused: dict[str, str]) -> dict[str, Any]:
    """Each answer decoded; one that cannot be is refused (named) and left out."""
    decoded = {}
    for site, payload in answers.items():
        try:
            decoded[site] = decode(payload)
        except SecAggError as error:
            refused[site] = str(error)
    return decoded

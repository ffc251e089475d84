"""The coordinator's round loop.

Round 0 evaluates the initial adapter at every site (the "before" numbers). Each round then
sends the global adapter to every site for local training, aggregates the replies with the
strategy and writes the new adapter as a PEFT directory. Every site evaluates each round's
adapter on its held-out split; that evaluation travels in the next round's train message
(``evaluate-received``: the site evaluates the adapter it received, then trains on it), so a
round is one exchange with each site, not two, and the adapter goes down once per round. Only
the last round's adapter is evaluated in an exchange of its own.

A round's ``metrics.jsonl`` line is therefore written in two steps: when its adapter is
aggregated (with ``"eval": null``, before the round's checkpoint, so that a resumed run knows
the evaluation is still owed) and again, complete, when the evaluation arrives. Replies that
are errors (a site refusing, crashing or timing out) are logged with the site and reason,
recorded in ``metrics.jsonl``, and left out of the aggregate.

Every reply is parsed once, on arrival, against the reply schema
(:func:`fedlora.replies.parse_reply`) and bound to the node it came from
(:class:`fedlora.server.site_binding.SiteBinding`); a reply that breaks the schema or speaks for
another site is dropped from the round (logged, and recorded under ``errors``) and the run
goes on. Everything after that reads the parsed :class:`~fedlora.replies.SiteReply` only.
Updates are validated before any strategy sees them, and the aggregate before it is saved
(:mod:`fedlora.strategies.validation`).
"""

from __future__ import annotations

import copy
import importlib.metadata
import logging
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from flwr.app import Message
from flwr.serverapp import Grid

from fedlora.adapters import (
    AdapterState,
    adapter_state,
    check_compatible,
    pack_adapter,
    save_peft_dir,
)
from fedlora.config import RunConfig
from fedlora.errors import (
    AdapterError,
    BudgetExhaustedError,
    ConfigError,
    FedloraError,
    RunDirError,
)
from fedlora.lora_factors import is_lora_a
from fedlora.models import apply_lora, check_fingerprint, load_base_model
from fedlora.progress import Phase, RoundObserver
from fedlora.protocol import make_instruction
from fedlora.replies import ReplyRejectedError, SiteReply, parse_reply
from fedlora.server.checkpoint import (
    Checkpoint,
    StatefulStrategy,
    config_differences,
    read_checkpoint,
    write_checkpoint,
)
from fedlora.server.reply_polls import ReplyPolls
from fedlora.server.rundir import RunDirectory
from fedlora.server.site_binding import SiteBinding
from fedlora.server.site_receipts import SiteReceipts
from fedlora.strategies import SiteUpdate, build_strategy
from fedlora.strategies.central_dp import CentralDP
from fedlora.strategies.ffa_lora import trained_state
from fedlora.strategies.hetero_rank import HeteroRank, site_state_for_config
from fedlora.strategies.registry import wrap_with_central_dp
from fedlora.strategies.validation import (
    AggregateRejectedError,
    UpdateRejectedError,
    check_weighted_norm,
    effective_bound,
    validate_aggregate,
    validate_update,
)

logger = logging.getLogger(__name__)

_PACKAGES = ("fedlora", "flwr", "torch", "transformers", "peft", "opacus", "numpy")


@dataclass
class _PhaseResult:
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


def package_versions() -> dict[str, str]:
    """Installed versions of the packages a run's results depend on."""
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


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


class Federation:
    """One federated run: the global adapter, the sites, the run directory."""

    def __init__(
        self,
        grid: Grid,
        config: RunConfig,
        observer: RoundObserver | None = None,
        roster: Mapping[int, str] | None = None,
    ) -> None:
        self.grid = grid
        self.config = config
        self.run_dir = RunDirectory(Path())
        self.observer = observer or RoundObserver()
        self.strategy = wrap_with_central_dp(build_strategy(config), config, config.sites)
        self.base = load_base_model(
            config.model, task=config.task, labels=config.labels, max_length=config.max_length
        )
        self.peft = apply_lora(self.base, config)
        self.global_state: AdapterState = adapter_state(self.peft)
        if isinstance(self.strategy, HeteroRank):
            # Checks lora-r against every module's dimensions before any training.
            self.strategy.set_global(self.global_state)
        self.binding = SiteBinding(roster)
        """Which site each node speaks for (``roster``: node id -> enrolled site name)."""
        self._saved_binding: dict[str, str] = {}
        """A resumed run's ``site-nodes``, restored once the nodes are connected."""
        self._new_binding = False
        self.first_round = 1
        self.pending: dict[str, Any] | None = None
        """The last aggregated round's metrics line while its evaluation is owed."""
        self.fastest_train_s: float | None = None
        """The fastest train exchange so far (push to last reply): when replies are due."""
        self.receipts = SiteReceipts()
        """Each site's last reported ledger length: a ledger that shrank is refused."""

    def resolved_config(self, sites: Iterable[str] = ()) -> dict[str, Any]:
        """What ``config.json`` records: the flat config plus provenance."""
        return {
            "run-id": self.run_dir.run_id,
            "config": self.config.to_flat(),
            "base-fingerprint": self.base.fingerprint,
            "model-type": self.base.model_type,
            "strategy": self.strategy.name,
            "sites": list(sites),
            "site-nodes": self.binding.to_json(),
            "adapter-tensors": {name: list(t.shape) for name, t in self.global_state.items()},
            "versions": package_versions(),
        }

    def start(self, run_dir: RunDirectory) -> None:
        """Run every round into ``run_dir``; mark it complete, or incomplete with the reason."""
        self.run_dir = run_dir
        if isinstance(self.strategy, CentralDP):
            self.strategy.open_ledger(run_dir.path / "privacy" / "server-ledger.jsonl")
        try:
            self._run()
        except BudgetExhaustedError as exc:
            exc.run_dir = self.run_dir.path
            save_peft_dir(self.peft, self.global_state, self.run_dir.adapter_path(None))
            self.run_dir.mark("stopped", str(exc))
            logger.warning("run %s stopped: %s", self.run_dir.run_id, exc)
            raise
        except BaseException as exc:
            reason = f"{type(exc).__name__}: {exc}"
            self.run_dir.mark("incomplete", reason)
            logger.error("run %s stopped: %s", self.run_dir.run_id, reason)
            raise
        self.run_dir.mark("complete")

    def resume_from(self, checkpoint: Checkpoint, run_dir: RunDirectory) -> None:
        """Continue ``run_dir`` after its checkpoint's round, refusing any mismatch first.

        The checkpoint's config (``out`` aside) and base fingerprint must equal this run's;
        the global adapter, a stateful strategy's state and the RNG state are restored, and
        ``metrics.jsonl`` keeps only the rounds up to the checkpoint (a round cut short is
        run again, and recorded once).

        Raises
        ------
        ConfigError
            With the differing keys (``key: checkpoint -> now``).
        BaseMismatchError
            When the base model's fingerprint differs from the checkpoint's.
        RunDirError
            When the run is already complete or its state does not fit this adapter.
        """
        where = ("out", "resume")  # where the run lives and that it resumes: not the run
        current = {k: v for k, v in self.config.to_flat().items() if k not in where}
        saved = {k: v for k, v in checkpoint.config.items() if k not in where}
        differences = config_differences(saved, current)
        if differences:
            raise ConfigError(
                f"cannot resume {run_dir.path}: the config differs from its checkpoint "
                f"({'; '.join(differences)})"
            )
        check_fingerprint(expected=checkpoint.base_fingerprint, local=self.base.fingerprint)
        if run_dir.state() == "complete":
            raise RunDirError(f"{run_dir.path} is complete: there is nothing to resume")
        try:
            check_compatible(self.global_state, checkpoint.global_state)
        except AdapterError as error:
            raise RunDirError(f"checkpoint of {run_dir.path} does not fit: {error}") from None
        if isinstance(self.strategy, StatefulStrategy):
            if checkpoint.strategy_file is None:
                raise RunDirError(
                    f"checkpoint of {run_dir.path} holds no {self.strategy.name} state"
                )
            self.strategy.load_state(checkpoint.strategy_file, reference=checkpoint.global_state)
        self.global_state = checkpoint.global_state
        torch.random.set_rng_state(checkpoint.rng_state)
        self.first_round = checkpoint.server_round + 1
        bindings = run_dir.read_config().get("site-nodes")
        if isinstance(bindings, dict):
            self._saved_binding = {str(node): str(site) for node, site in bindings.items()}
        kept = [r for r in run_dir.read_metrics() if int(r["round"]) <= checkpoint.server_round]
        run_dir.rewrite_metrics(kept)
        self.receipts = SiteReceipts.from_metrics(kept)
        if kept and int(kept[-1]["round"]) == checkpoint.server_round and kept[-1]["eval"] is None:
            self.pending = kept[-1]  # the resumed run's first message evaluates its adapter
        run_dir.mark("running")
        logger.info("resuming %s after round %d", run_dir.run_id, checkpoint.server_round)

    def _run(self) -> None:
        config = self.config
        if self.first_round == 1:
            self.run_dir.write_config(self.resolved_config())
        node_ids = wait_for_nodes(self.grid, config.sites, config.node_wait_timeout)
        self.binding.restore(self._saved_binding, node_ids)
        self.observer.on_start(rounds=config.rounds, sites=len(node_ids))
        if self.first_round == 1:
            started = time.monotonic()
            initial = self._exchange(node_ids, 0, "evaluate")
            self.run_dir.write_config(self.resolved_config(sorted(self.binding.names.values())))
            record = self._round_record(0, started, None)
            self._finish(_with_evaluation(record, initial, time.monotonic() - started))
        for server_round in range(self.first_round, config.rounds + 1):
            started = time.monotonic()
            trained, updates = self._train_phase(node_ids, server_round, started)
            self.global_state = self._aggregate(server_round, started, trained, updates)
            save_peft_dir(self.peft, self.global_state, self.run_dir.adapter_path(server_round))
            self.pending = self._round_record(server_round, started, trained)
            self.run_dir.append_metrics(self.pending)
            write_checkpoint(
                self.run_dir.path,
                server_round=server_round,
                config=self.config.to_flat(),
                base_fingerprint=self.base.fingerprint,
                global_state=self.global_state,
                strategy=self.strategy,
            )
        if self.pending is not None:
            started = time.monotonic()
            evaluated = self._exchange(node_ids, int(self.pending["round"]), "evaluate")
            seconds = time.monotonic() - started
            self._finish(_with_evaluation(self.pending, evaluated, seconds), pending=True)
            self.pending = None
        save_peft_dir(self.peft, self.global_state, self.run_dir.adapter_path(None))

    def _aggregate(
        self,
        server_round: int,
        started: float,
        trained: _PhaseResult,
        updates: list[tuple[SiteUpdate, float, float]],
    ) -> AdapterState:
        """The strategy's aggregate of the validated updates, checked before it is saved.

        ``updates``: each update with its norm and the bound it was held to.

        Raises
        ------
        AggregateRejectedError
            When what enters the aggregate exceeds the bound, or the aggregate is not finite
            or beyond the built-in limit; the round's line records the reason, nothing of
            the round is saved (the previous checkpoint stays the one to resume from).
        """
        try:
            check_weighted_norm(
                [norm for _, norm, _ in updates],
                [update.num_examples for update, _, _ in updates],
                [bound for _, _, bound in updates],
            )
            aggregate = self.strategy.aggregate(self.global_state, [u for u, _, _ in updates])
            validate_aggregate(self.global_state, aggregate)
        except (AggregateRejectedError, AdapterError, FloatingPointError) as error:
            reason = f"round {server_round}: aggregate rejected, nothing saved: {error}"
            logger.error("%s", reason)
            trained.errors.append({"site": "*", "phase": "aggregate", "reason": str(error)})
            self._finish(self._round_record(server_round, started, trained, _PhaseResult()))
            raise AggregateRejectedError(reason) from None
        return aggregate

    def _train_phase(
        self, node_ids: list[int], server_round: int, started: float
    ) -> tuple[_PhaseResult, list[tuple[SiteUpdate, float, float]]]:
        """Train until ``min-fit`` updates are accepted, retrying up to ``round-retries`` times.

        Raises
        ------
        BudgetExhaustedError
            When every site declined for its privacy budget (a retry cannot help).
        FedloraError
            When the last attempt still has fewer than ``min-fit`` accepted updates.
        """
        config = self.config
        failed: list[dict[str, str]] = []
        for attempt in range(config.round_retries + 1):
            owed = self.pending
            trained = self._exchange(
                node_ids, server_round, "train", evaluate_received=owed is not None
            )
            if owed is not None:
                carried = self._carried_evaluation(trained, node_ids)
                self._finish(_with_evaluation(owed, carried), pending=True)
                self.pending = None
            trained.errors[:0] = failed
            updates = self._updates(trained)
            if len(updates) >= config.min_fit:
                return trained, updates
            if not updates and trained.refused and not trained.replies:
                self._finish(self._round_record(server_round, started, trained, _PhaseResult()))
                raise BudgetExhaustedError(
                    f"stopped before round {server_round} of {config.rounds}: every site "
                    "declined to train because the round would exceed its privacy budget"
                )
            shortfall = (
                f"round {server_round}: {len(updates)} accepted update(s), fewer than min-fit "
                f"= {config.min_fit}; rejected: {trained.rejected or 'none'}; errors: "
                f"{[e['site'] + ': ' + e['reason'] for e in trained.errors] or 'none'}"
            )
            if attempt < config.round_retries:
                logger.warning(
                    "%s; retrying (%d of %d)", shortfall, attempt + 1, config.round_retries
                )
                failed = [
                    *trained.errors,
                    *(
                        {"site": site, "phase": "train", "reason": f"update rejected: {why}"}
                        for site, why in trained.rejected.items()
                    ),
                    {"site": "*", "phase": "train", "reason": f"attempt {attempt + 1} retried"},
                ]
                continue
            self._finish(self._round_record(server_round, started, trained, _PhaseResult()))
            raise FedloraError(shortfall)
        raise AssertionError("unreachable")  # the loop returns or raises on its last attempt

    def _carried_evaluation(self, trained: _PhaseResult, node_ids: list[int]) -> _PhaseResult:
        """The evaluation the train replies carried, naming each site that sent none."""
        carried = _PhaseResult(evaluations=dict(trained.evaluations))
        for site in sorted(
            {self.binding.name(node_id) for node_id in node_ids} - set(carried.evaluations)
        ):
            reason = "no evaluation: its next train reply carried none"
            carried.errors.append({"site": site, "phase": "evaluate", "reason": reason})
        return carried

    def _exchange(
        self,
        node_ids: list[int],
        server_round: int,
        phase: Phase,
        *,
        evaluate_received: bool = False,
    ) -> _PhaseResult:
        adapter = pack_adapter(self.global_state)
        size = len(adapter)
        content = make_instruction(
            adapter,
            self.config,
            server_round=server_round,
            base_fingerprint=self.base.fingerprint,
            run_id=self.run_dir.run_id,
            evaluate_received=evaluate_received,
        )
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
        result = _PhaseResult()
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
            self._record_binding()
        for message_id in pending:
            site = self.binding.name(message_ids[message_id])
            reason = f"no reply within {self.config.round_timeout:.0f} s"
            logger.warning("round %d %s: site %s: %s", server_round, phase, site, reason)
            result.errors.append({"site": site, "phase": phase, "reason": reason})
            self.observer.on_reply(server_round=server_round, phase=phase, site=site, metrics=None)
        return result

    def _accept(
        self, reply: Message, node_id: int, server_round: int, phase: Phase, result: _PhaseResult
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
            self.observer.on_reply(server_round=server_round, phase=phase, site=site, metrics=None)
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

    def _record_binding(self) -> None:
        """Write new node bindings into ``config.json``, so that a resumed run keeps them."""
        self._new_binding = False
        payload = self.run_dir.read_config()
        payload["site-nodes"] = self.binding.to_json()
        payload["sites"] = sorted({*payload.get("sites", []), *self.binding.names.values()})
        self.run_dir.write_config(payload)

    def _update_reference(
        self, update: AdapterState, by_rank: dict[int, AdapterState]
    ) -> AdapterState:
        """What a site's update must match, names, shapes and dtypes, and its norm start from.

        FFA-LoRA sites send only what they train; a hetero-rank site sends factors of its own
        rank, measured from the global adapter cut to that rank (as the site cut it; computed
        once per rank and round, in ``by_rank``).
        """
        config = self.config
        if config.strategy == "ffa-lora":
            return trained_state(self.global_state)
        if config.strategy == "hetero-rank":
            ranks = {int(t.shape[0]) for name, t in update.items() if is_lora_a(name)}
            if len(ranks) == 1 and 1 <= (rank := ranks.pop()) <= config.lora_r:
                if rank not in by_rank:
                    by_rank[rank] = site_state_for_config(self.global_state, config, rank)
                return by_rank[rank]
        return self.global_state

    def _updates(self, trained: _PhaseResult) -> list[tuple[SiteUpdate, float, float]]:
        """The validated updates, each with its norm and the bound it was held to.

        Each rejected one is logged and kept in ``trained.rejected``.
        """
        updates = []
        by_rank: dict[int, AdapterState] = {}
        bound = self.config.update_norm_bound
        for site, reply in trained.replies.items():
            try:
                if reply.state is None:
                    raise UpdateRejectedError("the reply carries no adapter")
                reference = self._update_reference(reply.state, by_rank)
                norm = validate_update(reference, reply.state, norm_bound=bound)
            except AdapterError as exc:
                logger.warning("site %s: update rejected: %s", site, exc)
                trained.rejected[site] = str(exc)
                continue
            update = SiteUpdate(site=site, state=reply.state, num_examples=reply.num_examples)
            updates.append((update, norm, effective_bound(reference, bound)))
        return updates

    def _round_record(
        self,
        server_round: int,
        started: float,
        trained: _PhaseResult | None,
        evaluated: _PhaseResult | None = None,
    ) -> dict[str, Any]:
        """A round's ``metrics.jsonl`` line; ``"eval": null`` until ``evaluated`` is known.

        ``duration-s`` runs from building the round's train messages to this call: the
        training (with the previous round's evaluation it carried) and the aggregation.
        """
        sites: dict[str, dict[str, Any]] = {}
        if trained is not None:
            for site, reply in trained.replies.items():
                _site_entry(sites, site)["train"] = dict(reply.metrics)
            _add_bytes(sites, trained)
        record: dict[str, Any] = {
            "round": server_round,
            "sites": sites,
            "train": _weighted(sites, "train", ("train-loss",)) if trained else None,
            "eval": None,
            "bytes-sent": 0,
            "bytes-received": 0,
            "errors": list(trained.errors) if trained else [],
            "privacy": trained.privacy if trained else {},
            "refused": trained.refused if trained else {},
            "rejected": trained.rejected if trained else {},
            "duration-s": round(time.monotonic() - started, 3),
        }
        if trained is not None and trained.replies and isinstance(self.strategy, CentralDP):
            record["central-privacy"] = self.strategy.last_round_privacy()
        _total_bytes(record)
        return record if evaluated is None else _with_evaluation(record, evaluated)

    def _finish(self, record: dict[str, Any], *, pending: bool = False) -> None:
        """Write a complete round line; ``pending``: it replaces its ``"eval": null`` line."""
        if self.config.task == "sft" and record["eval"].get("loss") is not None:
            record["eval"]["perplexity"] = math.exp(min(record["eval"]["loss"], 50.0))
        if pending:
            self.run_dir.replace_last_metrics(record)
        else:
            self.run_dir.append_metrics(record)
        self.observer.on_round_end(record)


def _site_entry(sites: dict[str, dict[str, Any]], site: str) -> dict[str, Any]:
    return sites.setdefault(site, {"bytes-sent": 0, "bytes-received": 0})


def _add_bytes(sites: dict[str, dict[str, Any]], phase_result: _PhaseResult) -> None:
    for site, size in phase_result.bytes_sent.items():
        _site_entry(sites, site)["bytes-sent"] += size
    for site, size in phase_result.bytes_received.items():
        _site_entry(sites, site)["bytes-received"] += size


def _total_bytes(record: dict[str, Any]) -> None:
    record["bytes-sent"] = sum(entry["bytes-sent"] for entry in record["sites"].values())
    record["bytes-received"] = sum(entry["bytes-received"] for entry in record["sites"].values())


def _with_evaluation(
    record: dict[str, Any], evaluated: _PhaseResult, seconds: float | None = None
) -> dict[str, Any]:
    """``record`` completed with the sites' held-out metrics of its adapter.

    ``seconds``: the evaluation's own exchange, when it had one (``eval-duration-s``); an
    evaluation carried by the next round's train replies took its time in that round.
    """
    done = copy.deepcopy(record)  # the pending line stays as it was written
    for site, metrics in evaluated.evaluations.items():
        _site_entry(done["sites"], site)["eval"] = metrics
    _add_bytes(done["sites"], evaluated)
    _total_bytes(done)
    done["eval"] = _weighted(done["sites"], "eval", ("loss", "accuracy"))
    done["errors"] = [*done["errors"], *evaluated.errors]
    if seconds is not None:
        done["eval-duration-s"] = round(seconds, 3)
    return done


def _weighted(sites: dict[str, dict[str, Any]], key: str, names: tuple[str, ...]) -> dict[str, Any]:
    """Example-weighted means of ``names`` over the sites that reported ``key`` metrics."""
    reports = [entry[key] for entry in sites.values() if key in entry]
    total = sum(report["num-examples"] for report in reports)
    result: dict[str, Any] = {"num-examples": total, "num-sites": len(reports)}
    for name in names:
        values = [(report[name], report["num-examples"]) for report in reports if name in report]
        if values and total > 0:
            result[name] = sum(value * weight for value, weight in values) / sum(
                w for _, w in values
            )
    return result


def run_federation(
    grid: Grid,
    config: RunConfig,
    *,
    out: Path,
    run_id: str | None = None,
    observer: RoundObserver | None = None,
    resume: bool = False,
    roster: Mapping[int, str] | None = None,
) -> Federation:
    """Run a whole federation on ``grid`` and return it (its final global adapter included).

    The base model is loaded before the run directory is created, so a model that cannot be
    loaded leaves no run directory behind.

    Parameters
    ----------
    grid
        Flower's grid (simulation or deployment).
    config
        The resolved run configuration (classification labels already fixed).
    out
        Parent of the run directory.
    run_id
        Name of the run directory; a fresh timestamped id when ``None``.
    observer
        Optional progress hooks.
    resume
        Continue the existing run ``out/run_id`` from its checkpoint (the last completed
        round) to ``config.rounds``: see :meth:`Federation.resume_from`.
    roster
        Node id -> enrolled site name (a deployment's registration); a node then speaks for
        its enrolled site only. ``None``: each node is bound to the first name it declares
        (:class:`fedlora.server.site_binding.SiteBinding`).

    Raises
    ------
    FedloraError
        When the model cannot be loaded, sites do not connect, or a round has no usable
        update; a run that had started is then marked incomplete. For a resume: a missing,
        damaged or foreign checkpoint, or a config or base model that differs from it.
    """
    federation = Federation(grid, config, observer, roster)
    if resume:
        if run_id is None:
            raise ConfigError("resuming needs the run id of the run to continue")
        run_dir = RunDirectory(out / run_id)
        federation.resume_from(read_checkpoint(run_dir.path), run_dir)
        federation.start(run_dir)
        return federation
    federation.start(RunDirectory.create(out, run_id))
    return federation

"""The coordinator's round loop.

Round 0 evaluates the initial adapter at every site (the "before" numbers). Each round then
sends the global adapter to every site for local training, aggregates the replies with the
strategy and writes the new adapter as a PEFT directory. Every site evaluates each round's
adapter on its held-out split; that evaluation travels in the next round's train message
(``evaluate-received``: the site evaluates the adapter it received, then trains on it), so a
round is one exchange with each site, not two, and the adapter goes down once per round. Only
the last round's adapter is evaluated in an exchange of its own.

A round's ``metrics.jsonl`` line is written when its adapter is aggregated (``"eval": null``,
before the checkpoint, so a resume knows the evaluation is owed) and again when the evaluation
arrives (:mod:`fedlora.server.round_record`); the sites: :mod:`fedlora.server.exchange`. The
loop never asks which strategy it runs: it calls its hooks (:class:`fedlora.strategies.Strategy`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from flwr.serverapp import Grid

from fedlora.adapters import AdapterState, adapter_state, pack_adapter, save_peft_dir
from fedlora.config import RunConfig
from fedlora.errors import AdapterError, BudgetExhaustedError, ConfigError, FedloraError
from fedlora.models import apply_lora, load_run_base
from fedlora.progress import Phase, RoundObserver
from fedlora.protocol import make_instruction
from fedlora.server.aggregation import BoundedUpdate, checked_aggregate, validated_updates
from fedlora.server.checkpoint import (
    Checkpoint,
    check_resumable,
    read_checkpoint,
    restore_strategy,
    write_checkpoint,
)
from fedlora.server.exchange import PhaseResult, SiteExchange, wait_for_nodes
from fedlora.server.provenance import package_versions
from fedlora.server.round_record import (
    carried_evaluation,
    retried_errors,
    round_record,
    with_evaluation,
)
from fedlora.server.rundir import RunDirectory
from fedlora.server.secure_round import SecureAggregation, accepted_sites
from fedlora.server.site_receipts import SiteReceipts
from fedlora.strategies import Strategy, strategy_for_run
from fedlora.strategies.validation import AggregateRejectedError

logger = logging.getLogger(__name__)


class Federation:
    """One federated run: the global adapter, the sites, the run directory.

    ``strategy``: the run's strategy as :func:`fedlora.strategies.strategy_for_run` built it
    (the simulation harness builds it before generating data); ``None`` builds it here.
    """

    def __init__(
        self,
        grid: Grid,
        config: RunConfig,
        observer: RoundObserver | None = None,
        roster: Mapping[int, str] | None = None,
        *,
        strategy: Strategy | None = None,
    ) -> None:
        self.grid = grid
        self.config = config
        self.run_dir = RunDirectory(Path())
        self.observer = observer or RoundObserver()
        self.strategy = strategy if strategy is not None else strategy_for_run(config)
        self.base = load_run_base(config)
        self.peft = apply_lora(self.base, config)
        self.global_state: AdapterState = adapter_state(self.peft)
        self.strategy.prepare(self.global_state)
        self.sites = SiteExchange(grid, config, self.observer, roster)
        """The exchanges with the sites: node bindings, ledger receipts, reply timing."""
        self.secure = (
            SecureAggregation(self.sites, self.strategy, config)
            if config.secure_aggregation
            else None
        )
        """Secure rounds (``secure-aggregation``): the coordinator learns only the sum."""
        self._saved_binding: dict[str, str] = {}
        """A resumed run's ``site-nodes``, restored once the nodes are connected."""
        self.first_round = 1
        self.pending: dict[str, Any] | None = None
        """The last aggregated round's metrics line while its evaluation is owed."""

    @property
    def fastest_train_s(self) -> float | None:
        """The fastest train exchange so far (push to last reply): when replies are due."""
        return self.sites.fastest_train_s

    def resolved_config(self, sites: Iterable[str] = ()) -> dict[str, Any]:
        """What ``config.json`` records: the flat config plus provenance."""
        return {
            "run-id": self.run_dir.run_id,
            "config": self.config.to_flat(),
            "base-fingerprint": self.base.fingerprint,
            "model-type": self.base.model_type,
            "strategy": self.strategy.name,
            "sites": list(sites),
            "site-nodes": self.sites.binding.to_json(),
            "adapter-tensors": {name: list(t.shape) for name, t in self.global_state.items()},
            "versions": package_versions(),
        }

    def start(self, run_dir: RunDirectory) -> None:
        """Run every round into ``run_dir``; mark it complete, or incomplete with the reason."""
        self.run_dir = run_dir
        self.strategy.open_run(run_dir.path)
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
        check_resumable(
            checkpoint,
            run_dir.path,
            config=self.config.to_flat(),
            base_fingerprint=self.base.fingerprint,
            global_state=self.global_state,
            complete=run_dir.state() == "complete",
        )
        restore_strategy(checkpoint, self.strategy, run_dir.path)
        self.global_state = checkpoint.global_state
        torch.random.set_rng_state(checkpoint.rng_state)
        self.first_round = checkpoint.server_round + 1
        bindings = run_dir.read_config().get("site-nodes")
        if isinstance(bindings, dict):
            self._saved_binding = {str(node): str(site) for node, site in bindings.items()}
        kept = [r for r in run_dir.read_metrics() if int(r["round"]) <= checkpoint.server_round]
        run_dir.rewrite_metrics(kept)
        self.sites.receipts = SiteReceipts.from_metrics(kept)
        if kept and int(kept[-1]["round"]) == checkpoint.server_round and kept[-1]["eval"] is None:
            self.pending = kept[-1]  # the resumed run's first message evaluates its adapter
        run_dir.mark("running")
        logger.info("resuming %s after round %d", run_dir.run_id, checkpoint.server_round)

    def _run(self) -> None:
        config = self.config
        if self.first_round == 1:
            self.run_dir.write_config(self.resolved_config())
        node_ids = wait_for_nodes(self.grid, config.sites, config.node_wait_timeout)
        self.sites.binding.restore(self._saved_binding, node_ids)
        self.observer.on_start(rounds=config.rounds, sites=len(node_ids))
        if self.first_round == 1:
            started = time.monotonic()
            initial = self._exchange(node_ids, 0, "evaluate")
            self.run_dir.write_config(
                self.resolved_config(sorted(self.sites.binding.names.values()))
            )
            record = self._round_record(0, started, None)
            self._finish(with_evaluation(record, initial, time.monotonic() - started))
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
            self._finish(with_evaluation(self.pending, evaluated, seconds), pending=True)
            self.pending = None
        save_peft_dir(self.peft, self.global_state, self.run_dir.adapter_path(None))

    def _aggregate(
        self,
        server_round: int,
        started: float,
        trained: PhaseResult,
        updates: list[BoundedUpdate],
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
            aggregate = checked_aggregate(self.strategy, self.global_state, updates)
        except (AggregateRejectedError, AdapterError, FloatingPointError) as error:
            reason = f"round {server_round}: aggregate rejected, nothing saved: {error}"
            logger.error("%s", reason)
            trained.errors.append({"site": "*", "phase": "aggregate", "reason": str(error)})
            self._finish(self._round_record(server_round, started, trained, PhaseResult()))
            raise AggregateRejectedError(reason) from None
        return aggregate

    def _train_phase(
        self, node_ids: list[int], server_round: int, started: float
    ) -> tuple[PhaseResult, list[BoundedUpdate]]:
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
                expected = {self.sites.binding.name(node_id) for node_id in node_ids}
                carried = carried_evaluation(trained, expected)
                self._finish(with_evaluation(owed, carried), pending=True)
                self.pending = None
            trained.errors[:0] = failed
            updates = (
                self.secure.updates(trained, self.global_state, server_round, self.run_dir.run_id)
                if self.secure is not None
                else validated_updates(
                    self.strategy, self.global_state, trained, config.update_norm_bound
                )
            )
            if accepted_sites(updates) >= config.min_fit:
                return trained, updates
            if not updates and trained.refused and not trained.replies:
                self._finish(self._round_record(server_round, started, trained, PhaseResult()))
                raise BudgetExhaustedError(
                    f"stopped before round {server_round} of {config.rounds}: every site "
                    "declined to train because the round would exceed its privacy budget"
                )
            shortfall = (
                f"round {server_round}: {accepted_sites(updates)} accepted update(s), fewer than "
                f"min-fit = {config.min_fit}; rejected: {trained.rejected or 'none'}; errors: "
                f"{[e['site'] + ': ' + e['reason'] for e in trained.errors] or 'none'}"
            )
            if attempt < config.round_retries:
                logger.warning(
                    "%s; retrying (%d of %d)", shortfall, attempt + 1, config.round_retries
                )
                failed = retried_errors(trained, attempt)
                continue
            self._finish(self._round_record(server_round, started, trained, PhaseResult()))
            raise FedloraError(shortfall)
        raise AssertionError("unreachable")  # the loop returns or raises on its last attempt

    def _exchange(
        self,
        node_ids: list[int],
        server_round: int,
        phase: Phase,
        *,
        evaluate_received: bool = False,
    ) -> PhaseResult:
        adapter = pack_adapter(self.global_state, self.config.wire_dtype)
        content = make_instruction(
            adapter,
            self.config,
            server_round=server_round,
            base_fingerprint=self.base.fingerprint,
            run_id=self.run_dir.run_id,
            evaluate_received=evaluate_received,
        )
        return self.sites.exchange(
            node_ids, server_round, phase, content=content, size=len(adapter), run_dir=self.run_dir
        )

    def _round_record(
        self,
        server_round: int,
        started: float,
        trained: PhaseResult | None,
        evaluated: PhaseResult | None = None,
    ) -> dict[str, Any]:
        """A round's ``metrics.jsonl`` line (:func:`~fedlora.server.round_record.round_record`).

        A round that had replies also gets the strategy's own entries (``round_metrics``).
        """
        extra = self.strategy.round_metrics() if trained is not None and trained.replies else {}
        return round_record(server_round, started, trained, evaluated, strategy_metrics=extra)

    def _finish(self, record: dict[str, Any], *, pending: bool = False) -> None:
        """Write a complete round line; ``pending``: it replaces its ``"eval": null`` line."""
        if self.config.task == "sft" and record["eval"].get("loss") is not None:
            record["eval"]["perplexity"] = math.exp(min(record["eval"]["loss"], 50.0))
        if pending:
            self.run_dir.replace_last_metrics(record)
        else:
            self.run_dir.append_metrics(record)
        self.observer.on_round_end(record)


def run_federation(
    grid: Grid,
    config: RunConfig,
    *,
    out: Path,
    run_id: str | None = None,
    observer: RoundObserver | None = None,
    resume: bool = False,
    roster: Mapping[int, str] | None = None,
    strategy: Strategy | None = None,
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
    strategy
        The run's strategy, already built (:func:`fedlora.strategies.strategy_for_run`);
        ``None`` builds it from ``config``.

    Raises
    ------
    FedloraError
        When the model cannot be loaded, sites do not connect, or a round has no usable
        update; a run that had started is then marked incomplete. For a resume: a missing,
        damaged or foreign checkpoint, or a config or base model that differs from it.
    """
    federation = Federation(grid, config, observer, roster, strategy=strategy)
    if resume:
        if run_id is None:
            raise ConfigError("resuming needs the run id of the run to continue")
        run_dir = RunDirectory(out / run_id)
        federation.resume_from(read_checkpoint(run_dir.path), run_dir)
        federation.start(run_dir)
        return federation
    federation.start(RunDirectory.create(out, run_id))
    return federation

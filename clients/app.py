"""The fedlora ClientApp: train and evaluate the global adapter on this site's data.

``app`` is the component Flower loads (``fedlora.clients.app:app``). Where a site's data lives is
node configuration, resolved by :func:`site_from_context`; the one-machine runner builds its own app
with :func:`make_client_app` and an explicit site list.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from flwr.app import Context, Error, Message
from flwr.clientapp import ClientApp

from fedlora.adapters import adapter_state, load_adapter_state, pack_adapter, unpack_adapter
from fedlora.clients.evaluation import evaluate_model
from fedlora.clients.private_round import Declined, train_with_privacy
from fedlora.clients.proximal import freeze_for_strategy, unfreeze
from fedlora.clients.runtime import LoadedModel, get_datasets, get_model
from fedlora.clients.secure_site import handle_secure_stage, secure_train_reply
from fedlora.clients.site_policy import check_dp_allowed
from fedlora.clients.site_rank import adapter_for_rank, config_for_rank, site_rank
from fedlora.clients.training import TrainResult, train_locally
from fedlora.config import DeviceChoice, RunConfig
from fedlora.data import TokenizedDataset
from fedlora.device import bf16_enabled, resolve_device
from fedlora.errors import ConfigError, FedloraError
from fedlora.lora_factors import trained_state
from fedlora.models import check_fingerprint
from fedlora.protocol import Instruction, make_reply, make_status_reply, read_instruction
from fedlora.quiet import quiet_library_warnings
from fedlora.secure_messages import ACTION
from fedlora.sites import SiteSpec, sites_from_files

logger = logging.getLogger(__name__)

# A site's process (a Ray worker, a deployment's ClientApp) shows fedlora's lines, not the
# libraries' notices its operator cannot act on; the fedlora command hides them in its own.
quiet_library_warnings()

SiteResolver = Callable[[Context, RunConfig], SiteSpec]


def site_from_context(context: Context, config: RunConfig) -> SiteSpec:
    """Find this node's site from its node config.

    A deployed SuperNode names its files (``train-file``, optional ``test-file`` and
    ``site-name``). A simulated node has a ``partition-id`` that picks one of the run's
    ``data-files`` or one site of the built-in scenario.

    Raises
    ------
    ConfigError
        When the node config says neither.
    """
    node = context.node_config
    if "train-file" in node:
        train = Path(str(node["train-file"]))
        test = Path(str(node["test-file"])) if "test-file" in node else None
        return SiteSpec(str(node.get("site-name", train.stem)), train, test)
    if "partition-id" not in node:
        raise ConfigError(
            "node config has neither train-file (a deployed site) "
            "nor partition-id (a simulated one)"
        )
    index = int(node["partition-id"])
    nodes = int(node.get("num-partitions", config.sites))
    if nodes != config.sites:
        raise ConfigError(
            f"the run config has sites = {config.sites} but the federation has {nodes} simulated "
            "nodes; set sites to the federation's num-supernodes"
        )
    if config.data_files:
        return sites_from_files(config.data_files, config.test_files)[index]
    # Only a simulated node without files reaches the built-in scenarios, hence the late import.
    from fedlora.simulations.materialize import scenario_sites

    return scenario_sites(config, Path(config.out) / ".scenario-data")[index]


def _refusal(message: Message, error: FedloraError) -> Message:
    logger.warning("refusing %s: %s", message.metadata.message_type, error)
    return Message(
        Error(code=error.error_code, reason=f"{type(error).__name__}: {error}"), reply_to=message
    )


@dataclass(frozen=True)
class _Job:
    """A decoded instruction with this site's model, data and device ready."""

    instruction: Instruction
    site: SiteSpec
    loaded: LoadedModel
    train_set: TokenizedDataset
    test_set: TokenizedDataset
    device: torch.device
    bf16: bool

    @property
    def config(self) -> RunConfig:
        return self.instruction.config

    @property
    def pad_id(self) -> int:
        return int(self.loaded.base.tokenizer.pad_token_id or 0)


def _prepare(message: Message, context: Context, resolve_site: SiteResolver) -> _Job:
    """Decode, check the base fingerprint, load the global adapter and this site's data."""
    instruction = read_instruction(message)
    config = instruction.config
    site = resolve_site(context, config)
    rank = site_rank(context, config, site.name)
    loaded = get_model(config_for_rank(config, rank))
    check_fingerprint(expected=instruction.base_fingerprint, local=loaded.base.fingerprint)
    received = unpack_adapter(instruction.adapter)
    load_adapter_state(loaded.peft, adapter_for_rank(received, config, rank))
    train_set, test_set = get_datasets(site, config, loaded)
    # A site's own node config picks its device (deployment); the run config otherwise.
    device = resolve_device(_device_choice(context, config))
    return _Job(
        instruction, site, loaded, train_set, test_set, device, bf16_enabled(config.bf16, device)
    )


def _device_choice(context: Context, config: RunConfig) -> DeviceChoice:
    choice = str(context.node_config.get("device", config.device))
    if choice not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"node config device must be auto, cpu or cuda, got {choice!r}")
    return choice  # type: ignore[return-value]


def handle_train(message: Message, context: Context, resolve_site: SiteResolver) -> Message:
    """Train the received global adapter on this site's data and reply with the update.

    With DP on (the default) the site's own policy decides first: a round that would exceed
    its privacy budget is declined with a ``budget-exhausted`` status and nothing is trained.
    When the instruction says ``evaluate-received``, the received adapter is first evaluated
    on the held-out split and the metrics travel with the reply (also with a decline).
    """
    job = _prepare(message, context, resolve_site)
    config, site = job.config, job.site
    seed = config.seed * 100_003 + job.instruction.server_round * 1_009 + _stable_hash(site.name)
    check_dp_allowed(config, context.node_config)
    evaluation = _evaluate(job) if job.instruction.evaluate_received else None
    frozen = freeze_for_strategy(job.loaded.peft, config)
    try:
        outcome = _train(job, context, seed)
    finally:
        unfreeze(job.loaded.peft, frozen)
        job.loaded.peft.to("cpu")
    if isinstance(outcome, Declined):
        return Message(
            make_status_reply(site.name, outcome.status, outcome.detail, evaluation),
            reply_to=message,
        )
    result, privacy = outcome
    metrics = {"num-examples": float(result.num_examples), "steps": float(result.steps)}
    if privacy is None:
        # A DP round's training loss is an un-noised statistic of the private records.
        metrics["train-loss"] = result.loss
    state = adapter_state(job.loaded.peft)
    if config.strategy == "ffa-lora":
        state = trained_state(state)  # A is frozen and shared: only B (and heads) travel
    if config.secure_aggregation:
        reply = secure_train_reply(
            context, job.instruction, site.name, state, metrics, privacy, evaluation
        )
        return Message(reply, reply_to=message)
    packed = pack_adapter(state, config.wire_dtype)
    reply = make_reply(site.name, metrics, packed, privacy, evaluation)
    return Message(reply, reply_to=message)


def _train(
    job: _Job, context: Context, seed: int
) -> Declined | tuple[TrainResult, dict[str, Any] | None]:
    """Train with DP (the site's policy decides first) or without; the result and privacy."""
    config, site = job.config, job.site
    if config.dp:
        outcome = train_with_privacy(
            job.loaded.peft,
            job.train_set,
            site=site,
            config=config,
            context=context,
            run_id=job.instruction.run_id,
            server_round=job.instruction.server_round,
            pad_id=job.pad_id,
            device=job.device,
            bf16=job.bf16,
        )
        if isinstance(outcome, Declined):
            return outcome
        return outcome.result, outcome.privacy
    result = train_locally(
        job.loaded.peft,
        job.train_set,
        config=config,
        pad_id=job.pad_id,
        device=job.device,
        bf16=job.bf16,
        seed=seed,
    )
    return result, None


def handle_evaluate(message: Message, context: Context, resolve_site: SiteResolver) -> Message:
    """Evaluate the received global adapter on this site's held-out split."""
    job = _prepare(message, context, resolve_site)
    return Message(make_reply(job.site.name, _evaluate(job)), reply_to=message)


def _evaluate(job: _Job) -> dict[str, float]:
    """Held-out metrics of the adapter loaded in ``job`` (the one the site received)."""
    metrics = evaluate_model(
        job.loaded.peft,
        job.test_set,
        task=job.config.task,
        pad_id=job.pad_id,
        device=job.device,
        bf16=job.bf16,
    )
    job.loaded.peft.to("cpu")
    return metrics


def _stable_hash(text: str) -> int:
    return sum((index + 1) * ord(char) for index, char in enumerate(text)) % 1_000_003


def make_client_app(resolve_site: SiteResolver = site_from_context) -> ClientApp:
    """Build a ClientApp whose sites are found by ``resolve_site``.

    fedlora errors (a base mismatch, bad data, an unusable config) become a Flower ``Error``
    reply with the error's code and message, so the coordinator logs the refusal and goes on
    with the other sites instead of the node crashing.
    """
    client_app = ClientApp()

    @client_app.train()
    def train(message: Message, context: Context) -> Message:
        try:
            return handle_train(message, context, resolve_site)
        except FedloraError as error:
            return _refusal(message, error)

    @client_app.train(ACTION)
    def secure_stage(message: Message, context: Context) -> Message:
        try:
            return handle_secure_stage(message, context)
        except FedloraError as error:
            return _refusal(message, error)

    @client_app.evaluate()
    def evaluate(message: Message, context: Context) -> Message:
        try:
            return handle_evaluate(message, context, resolve_site)
        except FedloraError as error:
            return _refusal(message, error)

    return client_app


app = make_client_app()

"""The fedlora ClientApp: train and evaluate the global adapter on this site's data.

``app`` is the component Flower loads (``clients.app:app``). Where a site's data lives is node
configuration, resolved by :func:`site_from_context`; the one-machine runner builds its own app
with :func:`make_client_app` and an explicit site list.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from flwr.app import Context, Error, Message
from flwr.clientapp import ClientApp

from clients.evaluation import evaluate_model
from clients.runtime import get_datasets, get_model
from clients.training import train_locally
from fedlora.adapters import adapter_state, from_array_record, load_adapter_state, to_array_record
from fedlora.config import RunConfig
from fedlora.device import bf16_enabled, resolve_device
from fedlora.errors import ConfigError, FedloraError
from fedlora.models import check_fingerprint
from fedlora.protocol import make_reply, read_instruction
from fedlora.sites import SiteSpec, sites_from_files

logger = logging.getLogger(__name__)

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
    from simulations.materialize import scenario_sites

    return scenario_sites(config, Path(config.out) / ".scenario-data")[index]


def _refusal(message: Message, error: FedloraError) -> Message:
    logger.warning("refusing %s: %s", message.metadata.message_type, error)
    return Message(
        Error(code=error.error_code, reason=f"{type(error).__name__}: {error}"), reply_to=message
    )


def handle_train(message: Message, context: Context, resolve_site: SiteResolver) -> Message:
    """Train the received global adapter on this site's data and reply with the update."""
    instruction = read_instruction(message)
    config = instruction.config
    site = resolve_site(context, config)
    loaded = get_model(config)
    check_fingerprint(expected=instruction.base_fingerprint, local=loaded.base.fingerprint)
    load_adapter_state(loaded.peft, from_array_record(instruction.adapter))
    train_set, _ = get_datasets(site, config, loaded)
    device = resolve_device(config.device)
    result = train_locally(
        loaded.peft,
        train_set,
        config=config,
        pad_id=int(loaded.base.tokenizer.pad_token_id or 0),
        device=device,
        bf16=bf16_enabled(config.bf16, device),
        seed=config.seed * 100_003 + instruction.server_round * 1_009 + _stable_hash(site.name),
    )
    loaded.peft.to("cpu")
    metrics = {
        "num-examples": float(result.num_examples),
        "train-loss": result.loss,
        "steps": float(result.steps),
    }
    return Message(
        make_reply(site.name, metrics, to_array_record(adapter_state(loaded.peft))),
        reply_to=message,
    )


def handle_evaluate(message: Message, context: Context, resolve_site: SiteResolver) -> Message:
    """Evaluate the received global adapter on this site's held-out split."""
    instruction = read_instruction(message)
    config = instruction.config
    site = resolve_site(context, config)
    loaded = get_model(config)
    check_fingerprint(expected=instruction.base_fingerprint, local=loaded.base.fingerprint)
    load_adapter_state(loaded.peft, from_array_record(instruction.adapter))
    _, test_set = get_datasets(site, config, loaded)
    device = resolve_device(config.device)
    metrics = evaluate_model(
        loaded.peft,
        test_set,
        task=config.task,
        pad_id=int(loaded.base.tokenizer.pad_token_id or 0),
        device=device,
        bf16=bf16_enabled(config.bf16, device),
    )
    loaded.peft.to("cpu")
    return Message(make_reply(site.name, metrics), reply_to=message)


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

    @client_app.evaluate()
    def evaluate(message: Message, context: Context) -> Message:
        try:
            return handle_evaluate(message, context, resolve_site)
        except FedloraError as error:
            return _refusal(message, error)

    return client_app


app = make_client_app()

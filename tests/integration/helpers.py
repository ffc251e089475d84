"""Independent re-evaluation of a run's adapters, for checking what a run reports."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from peft import PeftModel

from fedlora.clients.evaluation import evaluate_model
from fedlora.config import RunConfig
from fedlora.data import load_examples, tokenize
from fedlora.models import load_base_model
from fedlora.simulations.materialize import simulated_sites
from fedlora.sites import split_held_out


def reevaluate(run_dir: Path, adapter: str = "final") -> dict[str, dict[str, float]]:
    """Load ``adapters/<adapter>`` with stock peft on a fresh base and evaluate every site."""
    config = RunConfig.from_flat(json.loads((run_dir / "config.json").read_text())["config"])
    base = load_base_model(
        config.model, task=config.task, labels=config.labels, max_length=config.max_length
    )
    model = PeftModel.from_pretrained(base.model, str(run_dir / "adapters" / adapter))
    results = {}
    for site in simulated_sites(config):
        if site.test_file is None:
            train = load_examples(site.train_file, config.task, config.labels)
            _, examples = split_held_out(
                train, test_fraction=config.test_fraction, seed=config.seed, where=""
            )
        else:
            examples = load_examples(site.test_file, config.task, config.labels)
        dataset = tokenize(examples, base.tokenizer, max_length=config.max_length)
        results[site.name] = evaluate_model(
            model,
            dataset,
            task=config.task,
            pad_id=int(base.tokenizer.pad_token_id),
            device=torch.device("cpu"),
        )
    return results


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def scenario_client_app(config: RunConfig):
    """The real ClientApp for the sites of ``config``'s built-in scenario (by partition id)."""
    from fedlora.clients.app import make_client_app

    sites = simulated_sites(config)
    return make_client_app(lambda context, _config: sites[int(context.node_config["partition-id"])])


def corrupt_update(reply, fault: str):
    """Break a train reply's adapter: ``nan`` values, a mis-``shape``d or a ``huge`` tensor."""
    from fedlora.adapters import pack_adapter, unpack_adapter
    from fedlora.protocol import ADAPTER, SITE, reply_adapter

    state = unpack_adapter(reply_adapter(reply) or b"")
    name = sorted(state)[0]
    if fault == "nan":
        state[name] = torch.full_like(state[name], float("nan"))
    elif fault == "shape":
        state[name] = torch.zeros(3, 3)
    elif fault == "huge":
        state[name] = state[name] + 1e3
    else:
        raise ValueError(f"unknown fault {fault!r}")
    reply.content.config_records[SITE][ADAPTER] = pack_adapter(state)
    return reply


def tampering_app(config: RunConfig, faults: dict[int, str]):
    """The scenario's ClientApp with site ``i``'s train replies broken by ``faults[i]``."""
    app = scenario_client_app(config)

    def run(message, context):
        reply = app(message, context)
        fault = faults.get(int(context.node_config["partition-id"]))
        if message.metadata.message_type != "train" or fault is None:
            return reply
        return corrupt_update(reply, fault)

    return run


class CoordinatorCrash(BaseException):
    """Stands in for the coordinator process dying (not an Exception: nothing catches it)."""


def crashing_in_round(app, server_round: int):
    """``app``, except that a message of ``server_round`` kills the coordinator."""

    def crashing(message, context):
        if message.metadata.group_id == str(server_round):
            raise CoordinatorCrash
        return app(message, context)

    return crashing

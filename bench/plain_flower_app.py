"""A minimal plain-Flower federated LoRA app: the baseline of ``bench/round_overhead.py``.

It trains the same base model + LoRA adapter as fedlora on the same site files, written the
way a Flower quickstart would write it: a ``ServerApp`` whose main loop sends the global
arrays to every node, averages the replies with Flower's own weighted FedAvg helper
(``aggregate_arrayrecords``) and sends the average out for evaluation; a ``ClientApp`` with a
plain PyTorch AdamW loop. None of fedlora's coordinator, protocol, strategy, run directory or
ClientApp code is used -- only ``fedlora.models`` (to build a bit-identical model) and
``fedlora.data`` (to read and batch the same examples identically).

Like fedlora's ClientApp, each ClientApp process keeps the loaded model and tokenised data in
memory between messages, so the comparison measures the federated plumbing, not model loads.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords
from peft import PeftModel, get_peft_model_state_dict, set_peft_model_state_dict
from torch.utils.data import DataLoader

from fedlora.config import RunConfig
from fedlora.data import IGNORE_INDEX, TokenizedDataset, collate, load_examples, tokenize
from fedlora.models import BaseModel, apply_lora, load_base_model
from fedlora.sites import SiteSpec

PULL_INTERVAL_S = 0.05
"""Reply polling interval; the same as fedlora's coordinator, so neither side gains from it."""

EVAL_BATCH_SIZE = 32
"""Evaluation batch size; the same as fedlora's ``evaluate_model``."""


@dataclass(frozen=True)
class PlainRound:
    """One timed round of the plain app."""

    server_round: int
    seconds: float
    train_loss: float
    eval_loss: float
    eval_accuracy: float | None


@dataclass
class PlainResult:
    """What the plain ServerApp hands back to the benchmark (it runs in this process)."""

    rounds: list[PlainRound] = field(default_factory=list)


# ---- ClientApp ----------------------------------------------------------------------------

_model_cache: dict[tuple[object, ...], tuple[BaseModel, PeftModel]] = {}
_data_cache: dict[tuple[object, ...], tuple[TokenizedDataset, TokenizedDataset]] = {}


def _model(config: RunConfig) -> tuple[BaseModel, PeftModel]:
    key = (config.model, config.task, config.labels, config.max_length, config.lora_r)
    if key not in _model_cache:
        base = load_base_model(
            config.model, task=config.task, labels=config.labels, max_length=config.max_length
        )
        _model_cache[key] = (base, apply_lora(base, config))
    return _model_cache[key]


def _datasets(
    site: SiteSpec, config: RunConfig, base: BaseModel
) -> tuple[TokenizedDataset, TokenizedDataset]:
    key = (site, config.task, config.labels, config.max_length)
    if key not in _data_cache:
        if site.test_file is None:
            raise ValueError(f"site {site.name} has no test file")
        train = load_examples(site.train_file, config.task, config.labels)
        test = load_examples(site.test_file, config.task, config.labels)
        _data_cache[key] = (
            tokenize(train, base.tokenizer, max_length=config.max_length),
            tokenize(test, base.tokenizer, max_length=config.max_length),
        )
    return _data_cache[key]


def _to_arrays(model: PeftModel) -> ArrayRecord:
    state = get_peft_model_state_dict(model)
    return ArrayRecord(
        {name: Array(state[name].detach().cpu().numpy().copy()) for name in sorted(state)}
    )


def _load_arrays(model: PeftModel, arrays: ArrayRecord) -> None:
    state = {name: torch.from_numpy(np.array(array.numpy())) for name, array in arrays.items()}
    set_peft_model_state_dict(model, state)


def _loader(
    dataset: TokenizedDataset, config: RunConfig, pad_id: int, *, batch_size: int, seed: int | None
) -> DataLoader[dict[str, list[int]]]:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=seed is not None,
        generator=torch.Generator().manual_seed(seed) if seed is not None else None,
        collate_fn=functools.partial(collate, pad_id=pad_id, task=config.task),
    )


def _shuffle_seed(config: RunConfig, site: SiteSpec, server_round: int) -> int:
    # fedlora's per-site, per-round batch-order seed, so both sides train on identical batches.
    name_hash = sum((i + 1) * ord(char) for i, char in enumerate(site.name)) % 1_000_003
    return config.seed * 100_003 + server_round * 1_009 + name_hash


def make_client_app(config: RunConfig, sites: Sequence[SiteSpec], device: str) -> ClientApp:
    """A ClientApp that trains / evaluates on ``sites[partition-id]`` with plain PyTorch."""
    app = ClientApp()
    torch_device = torch.device(device)

    def _setup(message: Message, context: Context) -> tuple[SiteSpec, BaseModel, PeftModel]:
        site = sites[int(context.node_config["partition-id"])]
        base, model = _model(config)
        _load_arrays(model, message.content.array_records["arrays"])
        model.to(torch_device)
        return site, base, model

    @app.train()
    def train(message: Message, context: Context) -> Message:
        site, base, model = _setup(message, context)
        train_set, _ = _datasets(site, config, base)
        server_round = int(message.content.config_records["config"]["server-round"])  # type: ignore[arg-type]
        pad_id = int(base.tokenizer.pad_token_id or 0)
        loader = _loader(
            train_set,
            config,
            pad_id,
            batch_size=config.batch_size,
            seed=_shuffle_seed(config, site, server_round),
        )
        optimizer = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad], lr=config.lr, weight_decay=0.0
        )
        model.train()
        total, steps = 0.0, 0
        for _ in range(config.local_epochs):
            for batch in loader:
                loss = model(**{k: v.to(torch_device) for k, v in batch.items()}).loss
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach())
                steps += 1
        model.eval()
        model.to("cpu")
        content = RecordDict(
            {
                "arrays": _to_arrays(model),
                "metrics": MetricRecord(
                    {"num-examples": len(train_set), "train-loss": total / max(steps, 1)}
                ),
            }
        )
        return Message(content, reply_to=message)

    @app.evaluate()
    @torch.no_grad()
    def evaluate(message: Message, context: Context) -> Message:
        site, base, model = _setup(message, context)
        _, test_set = _datasets(site, config, base)
        pad_id = int(base.tokenizer.pad_token_id or 0)
        model.eval()
        loss_sum, count, correct = 0.0, 0, 0
        for batch in _loader(test_set, config, pad_id, batch_size=EVAL_BATCH_SIZE, seed=None):
            labels = batch.pop("labels").to(torch_device)
            logits = model(**{k: v.to(torch_device) for k, v in batch.items()}).logits.float()
            if config.task == "sft":
                flat_labels = labels[:, 1:].reshape(-1)
                flat_logits = logits[:, :-1, :].reshape(-1, logits.shape[-1])
                loss_sum += float(
                    F.cross_entropy(
                        flat_logits, flat_labels, ignore_index=IGNORE_INDEX, reduction="sum"
                    )
                )
                count += int((flat_labels != IGNORE_INDEX).sum())
            else:
                loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
                correct += int((logits.argmax(dim=-1) == labels).sum())
                count += int(labels.numel())
        model.to("cpu")
        metrics = MetricRecord(
            {"num-examples": len(test_set), "loss": loss_sum / count if count else math.nan}
        )
        if config.task == "classification":
            metrics["accuracy"] = correct / count if count else math.nan
        return Message(RecordDict({"metrics": metrics}), reply_to=message)

    return app


# ---- ServerApp ----------------------------------------------------------------------------


def _wait_for_nodes(grid: Grid, expected: int, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        node_ids = sorted(grid.get_node_ids())
        if len(node_ids) >= expected:
            return node_ids[:expected]
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(node_ids)} of {expected} nodes connected")
        time.sleep(0.2)


def _send_and_collect(
    grid: Grid, node_ids: list[int], message_type: str, arrays: ArrayRecord, server_round: int
) -> list[Message]:
    """Send fresh messages (a Message cannot be re-sent) and wait for every reply."""
    messages = [
        Message(
            RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": server_round})}),
            dst_node_id=node_id,
            message_type=message_type,
            group_id=str(server_round),
        )
        for node_id in node_ids
    ]
    pending = set(grid.push_messages(messages))
    replies: list[Message] = []
    while pending:
        for reply in grid.pull_messages(pending):
            pending.discard(reply.metadata.reply_to_message_id)
            if reply.has_error():
                raise RuntimeError(f"{message_type} round {server_round}: {reply.error.reason}")
            replies.append(reply)
        if pending:
            time.sleep(PULL_INTERVAL_S)
    return replies


def _metric(reply: Message, name: str) -> float | None:
    value = reply.content.metric_records["metrics"].get(name)
    return None if value is None else float(value)  # type: ignore[arg-type]


def _weighted(replies: list[Message], name: str) -> float:
    """Example-weighted mean of metric ``name`` over the replies (NaN when none has it)."""
    pairs = [(_metric(r, name), _metric(r, "num-examples") or 0.0) for r in replies]
    known = [(value, weight) for value, weight in pairs if value is not None]
    total = sum(weight for _, weight in known)
    return sum(value * weight for value, weight in known) / total if total else math.nan


def make_server_app(config: RunConfig, result: PlainResult) -> ServerApp:
    """A ServerApp running ``config.rounds`` FedAvg rounds after one warm-up evaluation.

    Round ``r`` is timed from building its train messages to holding every evaluation reply
    (train at every node, FedAvg, evaluate at every node), as fedlora times its rounds.
    """
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        base = load_base_model(
            config.model, task=config.task, labels=config.labels, max_length=config.max_length
        )
        arrays = _to_arrays(apply_lora(base, config))
        node_ids = _wait_for_nodes(grid, config.sites, config.node_wait_timeout)
        # Round 0: evaluate the initial adapter (loads models and data in the ClientApps).
        _send_and_collect(grid, node_ids, "evaluate", arrays, 0)
        for server_round in range(1, config.rounds + 1):
            started = time.monotonic()
            trained = _send_and_collect(grid, node_ids, "train", arrays, server_round)
            arrays = aggregate_arrayrecords([r.content for r in trained], "num-examples")
            evaluated = _send_and_collect(grid, node_ids, "evaluate", arrays, server_round)
            seconds = time.monotonic() - started
            accuracy = _weighted(evaluated, "accuracy")
            result.rounds.append(
                PlainRound(
                    server_round=server_round,
                    seconds=seconds,
                    train_loss=_weighted(trained, "train-loss"),
                    eval_loss=_weighted(evaluated, "loss"),
                    eval_accuracy=None if math.isnan(accuracy) else accuracy,
                )
            )

    return app


def run_plain(
    config: RunConfig,
    sites: Sequence[SiteSpec],
    *,
    device: str = "cpu",
    client_gpus: float = 0.0,
    verbose: bool = False,
) -> list[PlainRound]:
    """Run the plain app under Flower's simulation engine and return its timed rounds."""
    from flwr.simulation import run_simulation

    result = PlainResult()
    backend_config = {
        "client_resources": {"num_cpus": config.client_cpus, "num_gpus": client_gpus},
        "init_args": {
            "logging_level": logging.INFO if verbose else logging.ERROR,
            "log_to_driver": verbose,
        },
    }
    run_simulation(
        server_app=make_server_app(config, result),
        client_app=make_client_app(config, sites, device),
        num_supernodes=len(sites),
        backend_config=backend_config,  # type: ignore[arg-type]
        verbose_logging=False,
    )
    if len(result.rounds) != config.rounds:
        raise RuntimeError(
            f"plain Flower app finished {len(result.rounds)} of {config.rounds} rounds"
        )
    return result.rounds

"""Independent re-evaluation of a run's adapters, for checking what a run reports."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from peft import PeftModel

from clients.evaluation import evaluate_model
from fedlora.config import RunConfig
from fedlora.data import load_examples, tokenize
from fedlora.models import load_base_model
from fedlora.sites import split_held_out
from simulations.materialize import simulated_sites


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

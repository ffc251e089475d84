"""Every strategy in a real federation (DP on, 3 sites x 2 rounds), and update rejection.

The federations run on the in-process engine (``simulate(..., engine="inprocess")``): the same
ServerApp round loop and ClientApp as Flower's engines, the sites one after another without
Ray, so twenty small federations fit in CI.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fedlora.adapters import adapter_state
from fedlora.config import RunConfig
from fedlora.errors import FedloraError
from fedlora.models import apply_lora, load_base_model
from fedlora.server.federation import run_federation
from fedlora.simulations.inprocess_grid import InProcessGrid
from fedlora.simulations.materialize import resolve_config, simulated_sites
from fedlora.simulations.runner import simulate
from fedlora.strategies import strategy_names
from tests.integration.helpers import tampering_app

pytestmark = pytest.mark.slow

MODELS = {"tiny-llama": "sft", "tiny-bert": "classification"}


def _config(tmp_path: Path, model: str, **overrides: object) -> RunConfig:
    settings: dict[str, object] = {
        "model": model,
        "task": MODELS[model],
        "sites": 3,
        "rounds": 2,
        "examples_per_site": 24,
        "max_length": 48,
        "batch_size": 8,
        "noise_multiplier": 1.0,
        "accountant": "rdp",
        "device": "cpu",
        "out": str(tmp_path / "runs"),
    }
    return resolve_config(RunConfig(**{**settings, **overrides}))  # type: ignore[arg-type]


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize("strategy", strategy_names())
def test_each_strategy_runs_with_dp(tmp_path: Path, strategy: str, model: str) -> None:
    config = _config(tmp_path, model, strategy=strategy)

    run_dir = simulate(config, run_id="run", engine="inprocess")

    records = _metrics(run_dir)
    assert [r["round"] for r in records] == [0, 1, 2]
    for record in records[1:]:
        assert record["rejected"] == {} and record["errors"] == []
        assert len(record["privacy"]) == 3  # every site spent, and said so
        assert math.isfinite(record["eval"]["loss"])
    final, initial = _saved(run_dir / "adapters" / "final"), _initial(config)
    assert sorted(final) == sorted(initial)
    changed = [name for name in final if not torch.equal(final[name], initial[name])]
    assert changed, "the strategy never moved the adapter"
    if strategy == "ffa-lora":
        assert not any(".lora_A." in name for name in changed)  # A stays the shared init
        assert any(".lora_B." in name for name in changed), changed


def _saved(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "adapter_model.safetensors"))


def _initial(config: RunConfig) -> dict[str, torch.Tensor]:
    """The run's starting adapter: LoRA's seeded initialisation, rebuilt."""
    base = load_base_model(config.model, task=config.task, labels=config.labels)
    return adapter_state(apply_lora(base, config))


@pytest.mark.parametrize(
    ("breakage", "reason"),
    [("nan", "has NaN or infinite values"), ("shape", "is (3, 3)"), ("huge", "exceeds")],
)
def test_a_bad_update_is_rejected_and_the_round_completes_on_the_rest(
    tmp_path: Path, breakage: str, reason: str
) -> None:
    config = _config(tmp_path, "tiny-llama", update_norm_bound=50.0, min_fit=2, rounds=1)
    grid = InProcessGrid(tampering_app(config, {1: breakage}), 3)

    federation = run_federation(grid, config, out=Path(config.out), run_id="run")

    [_, record] = _metrics(federation.run_dir.path)
    [(site, why)] = record["rejected"].items()
    assert reason in why
    assert record["train"]["num-sites"] == 3 and site in record["privacy"]  # it did spend
    assert json.loads((federation.run_dir.path / "status.json").read_text())["state"] == "complete"


def test_too_few_accepted_updates_stop_the_round_naming_the_rejections(tmp_path: Path) -> None:
    config = _config(tmp_path, "tiny-llama", min_fit=3, rounds=1)
    grid = InProcessGrid(tampering_app(config, {0: "nan"}), 3)

    with pytest.raises(FedloraError, match=r"2 accepted update.*min-fit = 3.*NaN"):
        run_federation(grid, config, out=Path(config.out), run_id="run")


def test_heterogeneous_ranks_train_together_each_site_at_its_own_rank(tmp_path: Path) -> None:
    config = _config(tmp_path, "tiny-llama", strategy="hetero-rank")
    low, mid, high = (site.name for site in simulated_sites(config))
    config = dataclasses.replace(config, site_ranks=(f"{low}=2", f"{mid}=4"))  # high: lora-r 8

    run_dir = simulate(config, run_id="run", engine="inprocess")

    [_, first, _] = _metrics(run_dir)
    uplink = {site: first["sites"][site]["bytes-received"] for site in (low, mid, high)}
    assert uplink[low] < uplink[mid] < uplink[high]  # each sends factors of its own rank
    final = _saved(run_dir / "adapters" / "final")
    ranks = {t.shape[0] for name, t in final.items() if ".lora_A." in name}
    assert ranks == {8}  # the saved global adapter is at lora-r, a standard PEFT adapter

"""Helpers for your own integration tests: a real tiny federation in seconds on a CPU.

Use the function directly::

    from fedlora.testing import run_tiny_federation

    def test_my_sites_train(tmp_path):
        run_dir = run_tiny_federation(tmp_path, task="classification",
                                      data_files=["site_a.jsonl", "site_b.jsonl"])
        assert (run_dir / "adapters" / "final" / "adapter_model.safetensors").exists()

or as a pytest fixture, after ``pytest_plugins = ["fedlora.testing"]`` in your
``conftest.py``: the ``tiny_federation`` fixture is a function with the same arguments minus
the output folder (it uses the test's ``tmp_path``).

The run goes through the real simulation engine (Flower + Ray), the real ClientApp and
ServerApp, with a tiny preset model built from a config: nothing is downloaded.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from fedlora.config import RunConfig, Task

try:
    import pytest
except ImportError:  # the function works without pytest; only the fixture needs it
    pytest = None  # type: ignore[assignment]

TINY_DEFAULTS: dict[str, Any] = {
    "rounds": 2,
    "examples_per_site": 40,
    "batch_size": 8,
    "lr": 0.02,
    "max_length": 96,
}


def run_tiny_federation(
    out: Path | str,
    *,
    task: Task = "classification",
    model: str | None = None,
    data_files: Sequence[str | Path] = (),
    test_files: Sequence[str | Path] = (),
    sites: int = 3,
    scenario: str = "hospitals",
    engine: Literal["ray", "inprocess"] = "ray",
    **overrides: Any,
) -> Path:
    """Run a small federation and return its run directory.

    Parameters
    ----------
    out
        Folder that receives the run directory (and generated scenario data).
    task
        ``"classification"`` or ``"sft"``.
    model
        Preset, hub id or local directory; defaults to ``tiny-bert`` for classification and
        ``tiny-llama`` for SFT.
    data_files
        Your site files (JSONL or CSV), one per site; when empty, the built-in scenario's
        generated data is used with ``sites`` sites.
    test_files
        Optional held-out file per data file.
    sites
        Number of sites for a built-in scenario (ignored with ``data_files``).
    scenario
        Built-in scenario when no files are given.
    engine
        ``ray`` (Flower's simulation engine) or ``inprocess`` (the sites one after another in
        this process, no Ray start-up: fastest for tiny models).
    **overrides
        Any other :class:`~fedlora.config.RunConfig` field (``rounds``, ``lr``, ...).

    Returns
    -------
    Path
        The completed run directory (``config.json``, ``metrics.jsonl``, ``adapters/``).

    Raises
    ------
    FedloraError
        For bad input or a run that does not complete.
    """
    from fedlora.simulations.runner import simulate

    settings: dict[str, Any] = {**TINY_DEFAULTS, **overrides}
    config = RunConfig(
        task=task,
        model=model or ("tiny-bert" if task == "classification" else "tiny-llama"),
        scenario=scenario,
        sites=0 if data_files else sites,
        data_files=tuple(str(path) for path in data_files),
        test_files=tuple(str(path) for path in test_files),
        out=str(out),
        **settings,
    )
    return simulate(config, engine=engine)


def write_sft_file(path: Path | str, site: str, count: int) -> Path:
    """Write ``count`` synthetic prompt/response records of ``site`` as JSONL to ``path``.

    Distinct per site and per record, so each site's data file (and ledger) is its own; for
    tests and benchmarks that need real site files without a scenario.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [
        {"prompt": f"Question {index} at {site}?", "response": f"Answer {index} from {site}."}
        for index in range(count)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


if pytest is not None:

    @pytest.fixture
    def tiny_federation(tmp_path: Path) -> Callable[..., Path]:
        """Fixture: ``tiny_federation(**kwargs)`` is :func:`run_tiny_federation` in ``tmp_path``."""

        def run(**kwargs: Any) -> Path:
            return run_tiny_federation(tmp_path, **kwargs)

        return run

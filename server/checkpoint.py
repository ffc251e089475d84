"""Per-round checkpoints of a run, written atomically, refused whole when anything is off.

After every completed round the round loop writes, under ``RUN_DIR/checkpoint/``:

* ``state-rNNN.safetensors``: the global adapter (``adapter/<name>``) and the coordinator's
  torch RNG state (``rng/torch``);
* ``strategy-rNNN.safetensors``: a stateful strategy's state (server optimisers' moments and
  step; central DP's clip norm, its releases being in ``privacy/server-ledger.jsonl``), written
  by the strategy's own ``save_state``;
* ``checkpoint.json`` last: the round, the run id, the resolved flat config, the base
  fingerprint and the SHA-256 of each file above.

Every file goes through a temporary file, ``fsync`` and a rename (:mod:`fedlora.io`), and the
round's files carry its number, so the manifest always names complete files: a crash at any
point leaves the previous round's checkpoint valid. Older rounds' files are removed after the
new manifest is in place. :func:`read_checkpoint` verifies the manifest, every hash and the
run id, and refuses the whole checkpoint otherwise.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from fedlora.adapters import AdapterState, check_compatible
from fedlora.config import upgrade_legacy
from fedlora.errors import AdapterError, ConfigError, RunDirError
from fedlora.io import atomic_write_bytes, atomic_write_json
from fedlora.models import check_fingerprint

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoint"
MANIFEST = "checkpoint.json"
FORMAT = "fedlora-checkpoint/1"
_ADAPTER = "adapter/"
_RNG = "rng/torch"


@runtime_checkable
class StatefulStrategy(Protocol):
    """A strategy whose state must survive a restart (server optimisers, central DP's clip norm)."""

    def save_state(self, path: Path) -> None: ...  # noqa: D102

    def load_state(self, path: Path, *, reference: AdapterState | None = None) -> None: ...  # noqa: D102


@dataclass(frozen=True)
class Checkpoint:
    """A verified checkpoint: the last completed round and what resuming needs."""

    run_id: str
    server_round: int
    config: dict[str, Any]
    base_fingerprint: str
    global_state: AdapterState
    rng_state: torch.Tensor
    strategy_file: Path | None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_checkpoint(
    run_dir: Path,
    *,
    server_round: int,
    config: dict[str, Any],
    base_fingerprint: str,
    global_state: AdapterState,
    strategy: object,
) -> Path:
    """Write round ``server_round``'s checkpoint into ``run_dir/checkpoint`` (see the module).

    Returns
    -------
    Path
        The manifest written last.
    """
    folder = run_dir / CHECKPOINT_DIR
    tensors = {
        f"{_ADAPTER}{name}": tensor.detach().cpu().contiguous()
        for name, tensor in global_state.items()
    }
    tensors[_RNG] = torch.random.get_rng_state()
    state_name = f"state-r{server_round:03d}.safetensors"
    payload = save_tensors(tensors)
    atomic_write_bytes(folder / state_name, payload)
    files = {state_name: _sha256(payload)}
    if isinstance(strategy, StatefulStrategy):
        strategy_name = f"strategy-r{server_round:03d}.safetensors"
        strategy.save_state(folder / strategy_name)
        files[strategy_name] = _sha256((folder / strategy_name).read_bytes())
    manifest = {
        "format": FORMAT,
        "run-id": run_dir.name,
        "round": server_round,
        "config": config,
        "base-fingerprint": base_fingerprint,
        "files": files,
    }
    atomic_write_json(folder / MANIFEST, manifest)
    for old in folder.glob("*-r[0-9][0-9][0-9].safetensors"):
        if old.name not in files:
            old.unlink(missing_ok=True)
    return folder / MANIFEST


def read_checkpoint(run_dir: Path) -> Checkpoint:
    """Read and verify ``run_dir``'s checkpoint.

    Raises
    ------
    RunDirError
        With one line naming the problem: no checkpoint, an unreadable or truncated manifest
        or file, a hash that does not match, a checkpoint of another run, a malformed state.
    """
    folder = run_dir / CHECKPOINT_DIR
    where = folder / MANIFEST
    if not where.exists():
        raise RunDirError(f"{run_dir} has no checkpoint ({where} is missing): nothing to resume")
    try:
        manifest = json.loads(where.read_text(encoding="utf-8"))
        server_round = int(manifest["round"])
        files: dict[str, str] = dict(manifest["files"])
        # a checkpoint of an older fedlora wrote "auto" settings as -1.0 or 0
        config = upgrade_legacy(manifest["config"], warn=False)
        fingerprint = str(manifest["base-fingerprint"])
        run_id = str(manifest["run-id"])
        if manifest.get("format") != FORMAT:
            raise ValueError(f"format {manifest.get('format')!r}, expected {FORMAT!r}")
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise RunDirError(f"checkpoint {where} is unreadable or incomplete: {error}") from None
    if run_id != run_dir.name:
        raise RunDirError(
            f"checkpoint {where} belongs to run {run_id!r}, not {run_dir.name!r}: "
            "it was copied from another run"
        )
    contents: dict[str, bytes] = {}
    for name, digest in files.items():
        path = folder / name
        try:
            data = path.read_bytes()
        except OSError as error:
            raise RunDirError(f"checkpoint file {path} is missing: {error.strerror}") from None
        if _sha256(data) != digest:
            raise RunDirError(
                f"checkpoint file {path} does not match its hash in {MANIFEST} "
                "(truncated or altered)"
            )
        contents[name] = data
    state_name = f"state-r{server_round:03d}.safetensors"
    if state_name not in contents:
        raise RunDirError(f"checkpoint {where} names no {state_name}")
    try:
        tensors = load_tensors(contents[state_name])
    except SafetensorError as error:
        raise RunDirError(f"checkpoint file {folder / state_name} is unreadable: {error}") from None
    if _RNG not in tensors:
        raise RunDirError(f"checkpoint file {folder / state_name} has no RNG state")
    strategy_name = f"strategy-r{server_round:03d}.safetensors"
    return Checkpoint(
        run_id=run_id,
        server_round=server_round,
        config=config,
        base_fingerprint=fingerprint,
        global_state={
            name[len(_ADAPTER) :]: tensor
            for name, tensor in sorted(tensors.items())
            if name.startswith(_ADAPTER)
        },
        rng_state=tensors[_RNG],
        strategy_file=folder / strategy_name if strategy_name in contents else None,
    )


def check_resumable(
    checkpoint: Checkpoint,
    run_dir: Path,
    *,
    config: dict[str, Any],
    base_fingerprint: str,
    global_state: AdapterState,
    complete: bool,
) -> None:
    """Refuse to continue ``run_dir`` from ``checkpoint`` unless this run is the same run.

    Parameters
    ----------
    checkpoint
        The run directory's verified checkpoint.
    run_dir
        The run directory (for messages).
    config
        This run's flat config; it must equal the checkpoint's, ``out`` and ``resume`` aside.
    base_fingerprint
        This run's base model fingerprint.
    global_state
        This run's initial adapter; the checkpoint's must fit it.
    complete
        Whether the run directory is already complete.

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
    current = {k: v for k, v in config.items() if k not in where}
    saved = {k: v for k, v in checkpoint.config.items() if k not in where}
    differences = config_differences(saved, current)
    if differences:
        raise ConfigError(
            f"cannot resume {run_dir}: the config differs from its checkpoint "
            f"({'; '.join(differences)})"
        )
    check_fingerprint(expected=checkpoint.base_fingerprint, local=base_fingerprint)
    if complete:
        raise RunDirError(f"{run_dir} is complete: there is nothing to resume")
    try:
        check_compatible(global_state, checkpoint.global_state)
    except AdapterError as error:
        raise RunDirError(f"checkpoint of {run_dir} does not fit: {error}") from None


def restore_strategy(checkpoint: Checkpoint, strategy: object, run_dir: Path) -> None:
    """Give a stateful ``strategy`` back the state ``checkpoint`` holds for it.

    A strategy without state (no ``save_state`` / ``load_state``) needs nothing.

    Raises
    ------
    RunDirError
        When the strategy keeps state but the checkpoint of ``run_dir`` holds none.
    """
    if not isinstance(strategy, StatefulStrategy):
        return
    if checkpoint.strategy_file is None:
        name = getattr(strategy, "name", type(strategy).__name__)
        raise RunDirError(f"checkpoint of {run_dir} holds no {name} state")
    strategy.load_state(checkpoint.strategy_file, reference=checkpoint.global_state)


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``key: saved -> current`` for every key whose value differs (missing keys included)."""
    keys = sorted(set(saved) | set(current))
    return [
        f"{key}: {saved.get(key, '<absent>')!r} -> {current.get(key, '<absent>')!r}"
        for key in keys
        if saved.get(key) != current.get(key)
    ]

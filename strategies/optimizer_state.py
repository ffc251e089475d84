"""The file a server optimiser's state is checkpointed in: one safetensors file, with a digest.

The moments are stored as float64 tensors named ``<slot>/<tensor name>``; the metadata key
``fedlora`` holds JSON with the format, the optimiser's class name and strategy name, ``step``,
the hyper-parameters and a SHA-256 digest over that JSON and every tensor's bytes. A file that
is missing, truncated, altered or of another format is refused whole.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from fedlora.errors import ConfigError
from fedlora.io import atomic_write_bytes

_FORMAT = "fedlora-server-optimizer"
_FORMAT_VERSION = 1
_METADATA_KEY = "fedlora"

Moments = dict[str, dict[str, torch.Tensor]]
"""Moment slot (``m``, ``v``, ``momentum``) to its float64 tensors by adapter tensor name."""


def write_state(
    path: Path,
    *,
    kind: str,
    name: str,
    step: int,
    hyperparameters: dict[str, float],
    moments: Moments,
) -> None:
    """Write an optimiser's state atomically to the safetensors file ``path``."""
    tensors = {
        f"{slot}/{tensor_name}": tensor.contiguous()
        for slot, by_name in moments.items()
        for tensor_name, tensor in by_name.items()
    }
    meta: dict[str, Any] = {
        "format": _FORMAT,
        "version": _FORMAT_VERSION,
        "kind": kind,
        "name": name,
        "step": step,
        "hyperparameters": hyperparameters,
    }
    meta["sha256"] = _digest(meta, tensors)
    data = safetensors.torch.save(tensors, metadata={_METADATA_KEY: json.dumps(meta)})
    atomic_write_bytes(path, data)


def read_state(path: Path) -> dict[str, Any]:
    """Read and verify what :func:`write_state` wrote.

    Returns
    -------
    dict
        ``kind``, ``step``, ``hyperparameters`` and ``moments``, not yet checked against any
        optimiser.

    Raises
    ------
    ConfigError
        When the file is missing, truncated or corrupt (its digest does not match), or is not
        a fedlora server optimiser state of this format version.
    """
    source = f"optimiser state {path}"
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {source}: {exc.strerror or exc}") from exc
    try:
        tensors = safetensors.torch.load(data)
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_len])
        meta = json.loads(header["__metadata__"][_METADATA_KEY])
    except Exception as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"{source} is truncated or corrupt ({detail})") from exc
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
        raise ConfigError(f"{source} is not a fedlora server optimiser state")
    if meta.get("version") != _FORMAT_VERSION:
        raise ConfigError(f"{source} has unsupported format version {meta.get('version')!r}")
    digest = meta.pop("sha256", None)
    try:
        expected_digest = _digest(meta, tensors)
    except Exception as exc:
        raise ConfigError(f"{source} is corrupt ({exc})") from exc
    if digest != expected_digest:
        raise ConfigError(f"{source} is corrupt: its checksum does not match its content")
    moments: Moments = {}
    for key, tensor in tensors.items():
        slot, sep, tensor_name = key.partition("/")
        if not sep:
            raise ConfigError(f"{source} has an unexpected tensor {key!r}")
        moments.setdefault(slot, {})[tensor_name] = tensor
    return {
        "kind": meta.get("kind"),
        "step": meta.get("step"),
        "hyperparameters": meta.get("hyperparameters"),
        "moments": moments,
    }


def _digest(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> str:
    hasher = hashlib.sha256(json.dumps(meta, sort_keys=True).encode("utf-8"))
    for key in sorted(tensors):
        tensor = tensors[key].detach().to("cpu").contiguous()
        header = json.dumps([key, str(tensor.dtype), list(tensor.shape)])
        hasher.update(header.encode("utf-8"))
        hasher.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return hasher.hexdigest()

"""Adapters in their three forms: tensors, Flower ``ArrayRecord`` and PEFT directories.

Only what peft calls the adapter state travels: the LoRA factors and the ``modules_to_save``
(a classification head). Base weights never leave a node. Conversions are bit-exact: tensors
go through NumPy arrays of the same dtype, never through a cast.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from flwr.app import Array, ArrayRecord
from peft import PeftModel, get_peft_model_state_dict, set_peft_model_state_dict

from fedlora.errors import AdapterError
from fedlora.io import fsync_tree

logger = logging.getLogger(__name__)

AdapterState = dict[str, torch.Tensor]


def adapter_state(model: PeftModel) -> AdapterState:
    """Return a detached CPU copy of the adapter tensors of ``model``, in a stable order."""
    state = get_peft_model_state_dict(model)
    return {name: state[name].detach().to("cpu").clone() for name in sorted(state)}


def check_compatible(
    expected: Mapping[str, torch.Tensor], received: Mapping[str, torch.Tensor]
) -> None:
    """Check that ``received`` has exactly the names, shapes and dtypes of ``expected``.

    Raises
    ------
    AdapterError
        Naming the first missing, unexpected or mis-shaped tensor.
    """
    missing = sorted(set(expected) - set(received))
    unexpected = sorted(set(received) - set(expected))
    if missing or unexpected:
        raise AdapterError(
            f"adapter tensors do not match: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    for name, reference in expected.items():
        tensor = received[name]
        if tensor.shape != reference.shape or tensor.dtype != reference.dtype:
            raise AdapterError(
                f"adapter tensor {name} is {tuple(tensor.shape)} {tensor.dtype}, "
                f"expected {tuple(reference.shape)} {reference.dtype}"
            )


def load_adapter_state(model: PeftModel, state: Mapping[str, torch.Tensor]) -> None:
    """Load adapter tensors into ``model`` after checking they fit it exactly.

    Raises
    ------
    AdapterError
        When names, shapes or dtypes differ from the model's adapter.
    """
    check_compatible(adapter_state(model), state)
    result = set_peft_model_state_dict(model, dict(state))
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected:
        raise AdapterError(f"adapter tensors not used by the model: {unexpected[:3]}")


def to_array_record(state: Mapping[str, torch.Tensor]) -> ArrayRecord:
    """Pack adapter tensors into a Flower ``ArrayRecord`` (bit-exact)."""
    return ArrayRecord(
        {
            name: Array(tensor.detach().to("cpu").contiguous().numpy())
            for name, tensor in state.items()
        }
    )


def from_array_record(record: ArrayRecord) -> AdapterState:
    """Unpack a Flower ``ArrayRecord`` into adapter tensors (bit-exact).

    Raises
    ------
    AdapterError
        When an array cannot be decoded.
    """
    state: AdapterState = {}
    for name, array in record.items():
        try:
            state[name] = torch.from_numpy(np.array(array.numpy(), copy=True))
        except Exception as exc:
            raise AdapterError(f"adapter tensor {name} cannot be decoded: {exc}") from exc
    return state


def payload_bytes(record: ArrayRecord) -> int:
    """Bytes of the serialised adapter payload, as it travels between coordinator and site."""
    return int(record.count_bytes())


def save_peft_dir(model: PeftModel, state: Mapping[str, torch.Tensor], path: Path) -> Path:
    """Write ``state`` as a standard PEFT adapter directory, atomically.

    The directory holds ``adapter_config.json`` and ``adapter_model.safetensors``; it is
    written beside ``path`` under a temporary name, flushed to disk and renamed into place, so
    a reader never sees a half-written adapter.

    Parameters
    ----------
    model
        A PeftModel of the right architecture; its adapter is set to ``state``.
    state
        Adapter tensors to save.
    path
        Destination directory; replaced if it exists.

    Returns
    -------
    Path
        ``path``.
    """
    load_adapter_state(model, state)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        model.save_pretrained(str(staging), safe_serialization=True)
        fsync_tree(staging)
        if path.exists():
            shutil.rmtree(path)
        os.replace(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return path

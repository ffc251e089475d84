"""Adapters in their three forms: tensors, Flower ``ArrayRecord`` and PEFT directories.

Only what peft calls the adapter state travels: the LoRA factors and the ``modules_to_save``
(a classification head). Base weights never leave a node. Conversions are bit-exact: tensors
are serialised with their own dtype, never cast.

On the wire the adapter is one Flower ``Array`` holding the tensors in safetensors format
(names, dtypes and shapes in its header; no code is ever unpickled). Flower moves every array
of a message as separate objects, each one request per hop (ServerApp -> SuperLink ->
SuperNode -> ClientApp and back), so one array per adapter instead of one per tensor cuts a
tiny-llama message from 20 objects to 5 (``docs/benchmarks.md``, deployment overhead).
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
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save

from fedlora.errors import AdapterError
from fedlora.io import fsync_tree

logger = logging.getLogger(__name__)

AdapterState = dict[str, torch.Tensor]
PACKED_KEY = "adapter.safetensors"
"""The one array of an adapter ``ArrayRecord``: the tensors in safetensors format."""


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
    """Pack adapter tensors into a Flower ``ArrayRecord`` of one array (bit-exact).

    The array is the safetensors serialisation of ``state`` as bytes, under the key
    :data:`PACKED_KEY`.
    """
    tensors = {name: tensor.detach().to("cpu").contiguous() for name, tensor in state.items()}
    packed = np.frombuffer(safetensors_save(tensors), dtype=np.uint8)
    return ArrayRecord({PACKED_KEY: Array(packed)})


def from_array_record(record: ArrayRecord) -> AdapterState:
    """Unpack a Flower ``ArrayRecord`` into adapter tensors (bit-exact).

    Reads the packed form :func:`to_array_record` writes and, for records built elsewhere
    (Flower's own helpers, other tools), one array per tensor.

    Raises
    ------
    AdapterError
        When the packed bytes or an array cannot be decoded.
    """
    if list(record.keys()) == [PACKED_KEY]:
        try:
            raw = record[PACKED_KEY].numpy()
            if raw.dtype != np.uint8 or raw.ndim != 1:
                raise ValueError(f"expected a 1-D uint8 array, got {raw.dtype} {raw.shape}")
            return dict(safetensors_load(raw.tobytes()))
        except Exception as exc:
            raise AdapterError(f"the packed adapter cannot be decoded: {exc}") from exc
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

"""Adapters in their forms: tensors, packed bytes, Flower ``ArrayRecord`` and PEFT directories.

Only what peft calls the adapter state travels: the LoRA factors and the ``modules_to_save``
(a classification head). Base weights never leave a node. Conversions are bit-exact: tensors
are serialised with their own dtype, never cast.

On the wire the adapter is packed: the tensors in safetensors format (names, dtypes and
shapes in its header; no code is ever unpickled), as one byte string
(:func:`pack_adapter`). :mod:`fedlora.protocol` puts it inside the message's one record,
or, for an adapter larger than a Flower array chunk, into an ``ArrayRecord`` of one array
(:func:`packed_array_record`). Flower moves every record, array and chunk of a message as an
object of its own, one request per hop (ServerApp -> SuperLink -> SuperNode -> ClientApp
and back), so a tiny-llama message is 3 objects rather than 20 with one array per tensor
(``docs/benchmarks.md``, deployment overhead).
"""

from __future__ import annotations

import json
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
"""The one array of a large adapter's ``ArrayRecord``: its packed (safetensors) bytes."""


def adapter_state(model: PeftModel) -> AdapterState:
    """Return a detached CPU copy of the adapter tensors of ``model``, in a stable order.

    Only what training changes: the LoRA factors and the trained heads. PEFT would add a
    targeted output head's frozen base weight (``save_embedding_layers``); that never travels.
    """
    state = get_peft_model_state_dict(model, save_embedding_layers=False)
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


WIRE_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16}
"""The ``wire-dtype`` setting's choices."""

NARROWED_KEY = "fedlora-narrowed"
"""Safetensors metadata: the JSON list of the tensors :func:`pack_adapter` narrowed from
float32 to the wire dtype, which :func:`unpack_adapter` widens back."""


def pack_adapter(state: Mapping[str, torch.Tensor], wire_dtype: str = "float32") -> bytes:
    """Serialise adapter tensors to safetensors bytes.

    With ``wire_dtype="float32"`` each tensor keeps its own dtype (bit-exact); with
    ``"bfloat16"`` every float32 tensor is rounded to bfloat16, half the bytes, and named in
    the metadata so that :func:`unpack_adapter` widens it back.

    Raises
    ------
    AdapterError
        For a wire dtype that is not one of :data:`WIRE_DTYPES`.
    """
    if wire_dtype not in WIRE_DTYPES:
        choices = ", ".join(WIRE_DTYPES)
        raise AdapterError(f"wire-dtype must be one of {choices}, got {wire_dtype!r}")
    narrow = WIRE_DTYPES[wire_dtype]
    tensors, narrowed = {}, []
    for name, tensor in state.items():
        tensor = tensor.detach().to("cpu")
        if tensor.dtype == torch.float32 and narrow != torch.float32:
            tensor = tensor.to(narrow)
            narrowed.append(name)
        tensors[name] = tensor.contiguous()
    metadata = {NARROWED_KEY: json.dumps(sorted(narrowed))} if narrowed else None
    return bytes(safetensors_save(tensors, metadata=metadata))


def unpack_adapter(packed: bytes) -> AdapterState:
    """Decode what :func:`pack_adapter` wrote.

    Each tensor comes back in its own dtype, bit-exact, except those narrowed for the wire,
    which are widened back to float32 (exactly).

    Raises
    ------
    AdapterError
        When the bytes are not a safetensors serialisation, or its list of narrowed tensors
        is malformed.
    """
    try:
        state = dict(safetensors_load(bytes(packed)))
    except Exception as exc:
        raise AdapterError(f"the packed adapter cannot be decoded: {exc}") from exc
    for name in _narrowed(bytes(packed)):
        tensor = state.get(name)
        if tensor is None or tensor.dtype != torch.bfloat16:
            raise AdapterError(f"the packed adapter names {name!r} as narrowed, but it is not")
        state[name] = tensor.to(torch.float32)
    return state


def _narrowed(packed: bytes) -> list[str]:
    """The names in the header's :data:`NARROWED_KEY` (the header is valid: it was loaded)."""
    size = int.from_bytes(packed[:8], "little")
    metadata = json.loads(packed[8 : 8 + size]).get("__metadata__") or {}
    if NARROWED_KEY not in metadata:
        return []
    try:
        names = json.loads(metadata[NARROWED_KEY])
    except ValueError:
        names = None
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise AdapterError(f"the packed adapter's {NARROWED_KEY!r} is not a list of names")
    return names


def packed_array_record(packed: bytes) -> ArrayRecord:
    """An ``ArrayRecord`` of one ``uint8`` array holding ``packed`` (a packed adapter)."""
    return ArrayRecord({PACKED_KEY: Array(np.frombuffer(packed, dtype=np.uint8))})


def packed_from_array_record(record: ArrayRecord) -> bytes:
    """The packed adapter bytes of an ``ArrayRecord`` :func:`packed_array_record` built.

    Raises
    ------
    AdapterError
        When the record is not one 1-D ``uint8`` array under :data:`PACKED_KEY`.
    """
    if list(record.keys()) != [PACKED_KEY]:
        raise AdapterError(f"expected one packed array {PACKED_KEY!r}, got {list(record)[:3]}")
    try:
        raw = record[PACKED_KEY].numpy()
    except Exception as exc:
        raise AdapterError(f"the packed adapter cannot be decoded: {exc}") from exc
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise AdapterError(
            f"the packed adapter cannot be decoded: expected a 1-D uint8 array, "
            f"got {raw.dtype} {raw.shape}"
        )
    return raw.tobytes()


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
        model.save_pretrained(str(staging), safe_serialization=True, save_embedding_layers=False)
        fsync_tree(staging)
        if path.exists():
            shutil.rmtree(path)
        os.replace(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return path

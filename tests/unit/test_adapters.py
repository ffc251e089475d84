from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from peft import PeftModel

from fedlora.adapters import (
    PACKED_KEY,
    adapter_state,
    check_compatible,
    load_adapter_state,
    pack_adapter,
    packed_array_record,
    packed_from_array_record,
    save_peft_dir,
    unpack_adapter,
)
from fedlora.config import RunConfig
from fedlora.errors import AdapterError
from fedlora.models import apply_lora, load_base_model

LABELS = ("a", "b", "c")


def _perturbed(state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        name: torch.randn(t.shape, generator=generator, dtype=t.dtype) for name, t in state.items()
    }


@pytest.mark.parametrize(
    ("preset", "task"),
    [
        ("tiny-llama", "sft"),
        ("tiny-gpt2", "sft"),
        ("tiny-bloom", "classification"),
        ("tiny-bert", "classification"),
    ],
)
def test_adapter_round_trip_through_packed_bytes_and_peft_dir_is_bit_exact(
    tmp_path: Path, preset, task
):
    config = RunConfig(model=preset, task=task)
    model = apply_lora(load_base_model(preset, task=task, labels=LABELS), config)
    state = _perturbed(adapter_state(model), seed=7)

    unpacked = unpack_adapter(pack_adapter(state))
    save_peft_dir(model, unpacked, tmp_path / "adapter")
    fresh_base = load_base_model(preset, task=task, labels=LABELS).model
    reloaded = PeftModel.from_pretrained(fresh_base, str(tmp_path / "adapter"))
    restored = adapter_state(reloaded)

    assert sorted(restored) == sorted(state)
    for name in state:
        assert torch.equal(restored[name], state[name]), name


def test_classifier_head_travels_with_the_adapter():
    model = apply_lora(
        load_base_model("tiny-bert", task="classification", labels=LABELS),
        RunConfig(task="classification"),
    )
    names = adapter_state(model)
    assert any("classifier" in name for name in names)
    assert not any(
        "embeddings" in name or "attention.self.query.base_layer" in name for name in names
    )


def test_peft_dir_has_standard_files(tmp_path: Path):
    model = apply_lora(load_base_model("tiny-llama", task="sft"), RunConfig())
    save_peft_dir(model, adapter_state(model), tmp_path / "out")
    written = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= written
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], (
        "staging directory left behind"
    )


def test_check_compatible_names_a_misshaped_tensor():
    expected = {"w": torch.zeros(2, 3)}
    with pytest.raises(AdapterError, match=r"adapter tensor w is \(3, 2\)"):
        check_compatible(expected, {"w": torch.zeros(3, 2)})


def test_check_compatible_names_missing_and_unexpected_tensors():
    with pytest.raises(AdapterError, match=r"missing \['w'\], unexpected \['v'\]"):
        check_compatible({"w": torch.zeros(1)}, {"v": torch.zeros(1)})


def test_load_adapter_state_refuses_a_wrong_dtype():
    model = apply_lora(load_base_model("tiny-llama", task="sft"), RunConfig())
    state = {name: t.to(torch.float64) for name, t in adapter_state(model).items()}
    with pytest.raises(AdapterError, match="float64"):
        load_adapter_state(model, state)


def test_a_packed_adapter_is_safetensors_bytes_and_comes_back_bit_exact():
    state = {
        "base_model.model.q.lora_A.weight": torch.randn(4, 16),
        "base_model.model.q.lora_B.weight": torch.randn(16, 4).to(torch.bfloat16),
    }

    packed = pack_adapter(state)
    back = unpack_adapter(packed)

    assert isinstance(packed, bytes) and len(packed) >= 4 * 16 * 4 + 16 * 4 * 2
    assert back.keys() == state.keys()
    assert all(back[n].dtype == t.dtype and torch.equal(back[n], t) for n, t in state.items())
    assert packed_from_array_record(packed_array_record(packed)) == packed


def test_undecodable_packed_bytes_are_refused():
    with pytest.raises(AdapterError, match="packed adapter cannot be decoded"):
        unpack_adapter(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")


def test_a_large_adapter_travels_as_one_array_and_comes_back_bit_exact():
    state = {
        "base_model.model.q.lora_A.weight": torch.randn(4, 16),
        "base_model.model.q.lora_B.weight": torch.randn(16, 4).to(torch.bfloat16),
        "base_model.model.score.weight": torch.tensor([[1e-30, -0.0, float("inf")]]),
    }

    record = packed_array_record(pack_adapter(state))
    back = unpack_adapter(packed_from_array_record(record))

    assert list(record.keys()) == [PACKED_KEY]  # one array: few Flower objects per message
    one_tensor = packed_array_record(pack_adapter({"only": torch.zeros(2)}))
    # Flower moves the record, the array and its chunk: 3 objects, however many tensors.
    assert len(get_all_nested_objects(record)) == len(get_all_nested_objects(one_tensor)) == 3
    assert back.keys() == state.keys()
    for name, tensor in state.items():
        assert back[name].dtype == tensor.dtype and torch.equal(back[name], tensor)


@pytest.mark.parametrize(
    "record",
    [
        ArrayRecord({PACKED_KEY: Array(np.zeros(3))}),  # float64, not bytes
        ArrayRecord({PACKED_KEY: Array(np.zeros((2, 2), dtype=np.uint8))}),  # not 1-D
        ArrayRecord({"a": Array(np.zeros(3, dtype=np.uint8))}),  # one array per tensor
    ],
)
def test_an_array_record_that_is_not_a_packed_adapter_is_refused(record):
    with pytest.raises(AdapterError, match=r"packed adapter cannot be decoded|one packed array"):
        packed_from_array_record(record)

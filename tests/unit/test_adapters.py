from pathlib import Path

import pytest
import torch
from peft import PeftModel

from fedlora.adapters import (
    adapter_state,
    check_compatible,
    from_array_record,
    load_adapter_state,
    payload_bytes,
    save_peft_dir,
    to_array_record,
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
def test_adapter_round_trip_through_array_record_and_peft_dir_is_bit_exact(
    tmp_path: Path, preset, task
):
    config = RunConfig(model=preset, task=task)
    model = apply_lora(load_base_model(preset, task=task, labels=LABELS), config)
    state = _perturbed(adapter_state(model), seed=7)

    unpacked = from_array_record(to_array_record(state))
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


def test_payload_bytes_counts_at_least_the_tensor_bytes():
    state = {"a": torch.zeros(10, 4), "b": torch.zeros(3)}
    assert payload_bytes(to_array_record(state)) >= (40 + 3) * 4

"""``wire-dtype = bfloat16``: half the bytes on the wire, float32 everywhere else."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fedlora.adapters import NARROWED_KEY, adapter_state, pack_adapter, unpack_adapter
from fedlora.config import RunConfig
from fedlora.errors import AdapterError, ConfigError
from fedlora.models import apply_lora, load_base_model


@pytest.fixture(scope="module")
def trained_like_state() -> dict[str, torch.Tensor]:
    base = load_base_model("tiny-llama", task="sft")
    state = adapter_state(apply_lora(base, RunConfig()))
    generator = torch.Generator().manual_seed(0)
    return {name: torch.randn(t.shape, generator=generator) for name, t in state.items()}


def test_bfloat16_halves_the_bytes_and_widens_back_to_float32(trained_like_state) -> None:
    wide = pack_adapter(trained_like_state)
    narrow = pack_adapter(trained_like_state, "bfloat16")
    values = sum(t.numel() for t in trained_like_state.values())
    assert len(wide) > 4 * values and len(narrow) < 0.52 * len(wide), (len(wide), len(narrow))
    received = unpack_adapter(narrow)
    assert set(received) == set(trained_like_state)
    for name, sent in trained_like_state.items():
        assert received[name].dtype == torch.float32
        # exactly the bfloat16 rounding of what was sent: 8 significant bits
        assert torch.equal(received[name], sent.to(torch.bfloat16).to(torch.float32))
        assert torch.allclose(received[name], sent, rtol=2**-8, atol=0)


def test_float32_stays_bit_exact(trained_like_state) -> None:
    received = unpack_adapter(pack_adapter(trained_like_state, "float32"))
    assert all(torch.equal(received[n], t) for n, t in trained_like_state.items())


def test_only_float32_tensors_are_narrowed_and_widened() -> None:
    state = {
        "count": torch.arange(4, dtype=torch.int64),
        "half": torch.ones(2).half(),
        "native-bf16": torch.ones(2, dtype=torch.bfloat16),
    }
    received = unpack_adapter(pack_adapter(state, "bfloat16"))
    assert {name: t.dtype for name, t in received.items()} == {
        "count": torch.int64,
        "half": torch.float16,
        "native-bf16": torch.bfloat16,  # its own dtype: not one the wire narrowed
    }


def test_a_false_or_malformed_narrowed_list_is_refused() -> None:
    from safetensors.torch import save

    lying = save({"w": torch.ones(2)}, metadata={NARROWED_KEY: '["w"]'})
    with pytest.raises(AdapterError, match="names 'w' as narrowed, but it is not"):
        unpack_adapter(lying)
    malformed = save({"w": torch.ones(2)}, metadata={NARROWED_KEY: '{"w": 1}'})
    with pytest.raises(AdapterError, match="is not a list of names"):
        unpack_adapter(malformed)


def test_a_non_finite_value_survives_the_wire_for_the_checks_to_refuse() -> None:
    state = {"w": torch.tensor([1.0, float("nan"), float("inf")])}
    received = unpack_adapter(pack_adapter(state, "bfloat16"))["w"]
    assert torch.isnan(received[1]) and torch.isinf(received[2])


def test_an_unknown_wire_dtype_is_refused() -> None:
    with pytest.raises(AdapterError, match="wire-dtype must be one of float32, bfloat16"):
        pack_adapter({"w": torch.ones(1)}, "float16")
    with pytest.raises(ConfigError, match="wire-dtype must be one of float32, bfloat16"):
        RunConfig.from_flat({"wire-dtype": "float16"})


@pytest.mark.slow
def test_a_bfloat16_federation_sends_half_the_bytes(tmp_path: Path) -> None:
    from fedlora.testing import run_tiny_federation

    def round_one_bytes(wire_dtype: str) -> tuple[int, int]:
        run = run_tiny_federation(
            tmp_path / wire_dtype,
            task="sft",
            sites=2,
            rounds=1,
            examples_per_site=12,
            engine="inprocess",
            wire_dtype=wire_dtype,
            ledger_root=str(tmp_path / wire_dtype / "ledgers"),
        )
        assert json.loads((run / "status.json").read_text())["state"] == "complete"
        line = json.loads((run / "metrics.jsonl").read_text().splitlines()[1])
        return line["bytes-sent"], line["bytes-received"]

    wide, narrow = round_one_bytes("float32"), round_one_bytes("bfloat16")
    assert narrow[0] < 0.52 * wide[0] and narrow[1] < 0.52 * wide[1], (wide, narrow)

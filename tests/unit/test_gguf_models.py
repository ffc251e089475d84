"""GGUF base models: loading, fingerprints and stock-peft round trips, on GGUFs the tests write.

``gguf`` is a dev dependency, so these run in CI without any download.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from fedlora.adapters import adapter_state, save_peft_dir
from fedlora.config import RunConfig
from fedlora.errors import ModelError
from fedlora.models import (
    apply_lora,
    check_model_spec,
    fingerprint,
    load_base_model,
    load_run_base,
)
from tests.tiny_gguf import write_tiny_llama_gguf

LABELS = ("x", "y")


@pytest.fixture(scope="module")
def gguf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("gguf")
    write_tiny_llama_gguf(folder / "tiny.gguf", seed=0)
    write_tiny_llama_gguf(folder / "other.gguf", seed=1)
    write_tiny_llama_gguf(folder / "tiny-q8.gguf", seed=0, quantize=True)
    return folder


def _ids(tokenizer, text: str = "the patient felt better") -> torch.Tensor:
    return torch.tensor([tokenizer(text)["input_ids"]])


def test_a_gguf_file_loads_as_the_model_it_was_written_from(tmp_path: Path):
    written = write_tiny_llama_gguf(tmp_path / "model.gguf", seed=3)

    base = load_base_model(str(tmp_path / "model.gguf"), task="sft")

    assert check_model_spec(str(tmp_path / "model.gguf")) == "gguf"
    assert base.model_type == "llama"
    assert base.fingerprint == fingerprint(written)
    ids = _ids(base.tokenizer)
    with torch.no_grad():
        assert torch.allclose(base.model(ids).logits, written(ids).logits, atol=1e-5)


def test_a_folder_with_gguf_file_is_the_same_model(gguf_dir: Path):
    direct = load_base_model(str(gguf_dir / "tiny.gguf"), task="sft")
    config = RunConfig(model=str(gguf_dir), gguf_file="tiny.gguf")

    via_folder = load_run_base(config)

    assert check_model_spec(str(gguf_dir), "tiny.gguf") == "gguf"
    assert via_folder.fingerprint == direct.fingerprint


def test_the_fingerprint_is_stable_and_tells_models_apart(gguf_dir: Path):
    first = load_base_model(str(gguf_dir / "tiny.gguf"), task="sft").fingerprint
    again = load_base_model(str(gguf_dir / "tiny.gguf"), task="sft").fingerprint
    other = load_base_model(str(gguf_dir / "other.gguf"), task="sft").fingerprint

    assert first == again
    assert first != other


def test_the_fingerprint_covers_the_dequantised_weights(gguf_dir: Path):
    quantised = load_base_model(str(gguf_dir / "tiny-q8.gguf"), task="sft")
    float32 = load_base_model(str(gguf_dir / "tiny.gguf"), task="sft")

    assert quantised.model.dtype == torch.float32
    assert quantised.fingerprint == fingerprint(quantised.model)
    # the same model rounded to Q8_0 is a different base: its adapters do not transfer
    assert quantised.fingerprint != float32.fingerprint


def test_a_gguf_base_loads_for_classification_with_a_seeded_head(gguf_dir: Path):
    first = load_base_model(str(gguf_dir / "tiny.gguf"), task="classification", labels=LABELS)
    again = load_base_model(
        str(gguf_dir), gguf_file="tiny.gguf", task="classification", labels=LABELS
    )

    assert first.model.config.num_labels == 2
    assert first.fingerprint == again.fingerprint


def test_an_adapter_trained_on_a_gguf_base_loads_with_stock_peft(gguf_dir: Path, tmp_path: Path):
    config = RunConfig(model=str(gguf_dir / "tiny.gguf"))
    peft_model = apply_lora(load_run_base(config), config)
    with torch.no_grad():
        for name, tensor in peft_model.named_parameters():
            if "lora_B" in name:
                tensor.normal_(0, 0.5)
    state = adapter_state(peft_model)
    save_peft_dir(peft_model, state, tmp_path / "adapter")
    ids = _ids(load_run_base(config).tokenizer)
    with torch.no_grad():
        trained = peft_model(ids).logits

    # what the README tells a user to do: the base from the GGUF, then PeftModel.from_pretrained
    base = AutoModelForCausalLM.from_pretrained(str(gguf_dir), gguf_file="tiny.gguf")
    reloaded = PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(ids).logits, trained, atol=1e-5)
        with reloaded.disable_adapter():
            assert not torch.allclose(reloaded(ids).logits, trained, atol=1e-3)


@pytest.mark.parametrize(
    ("spec", "gguf_file", "message"),
    [
        ("{dir}/missing.gguf", "", "GGUF file not found"),
        ("{dir}/notes.txt", "", "not a .gguf file"),
        ("{dir}/tiny.gguf", "tiny.gguf", "already a GGUF file"),
        ("{dir}", "missing.gguf", "GGUF file missing.gguf not found in"),
        ("{dir}", "../tiny.gguf", "must be a file name inside the model folder"),
        ("tiny-llama", "tiny.gguf", "needs a folder or hub id as model, not preset"),
    ],
)
def test_bad_gguf_specs_are_refused_before_loading(gguf_dir: Path, spec, gguf_file, message):
    (gguf_dir / "notes.txt").write_text("not a model\n", encoding="utf-8")
    with pytest.raises(ModelError, match=message):
        check_model_spec(spec.format(dir=gguf_dir), gguf_file)


def test_a_hub_repository_with_gguf_file_is_a_gguf_source():
    assert check_model_spec("org/model-GGUF", "model.Q4_1.gguf") == "gguf"


def test_without_the_gguf_package_the_error_says_what_to_install(
    gguf_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setitem(sys.modules, "gguf", None)
    with pytest.raises(ModelError, match=r"needs the gguf package: pip install 'fedlora\[real\]'"):
        check_model_spec(str(gguf_dir / "tiny.gguf"))

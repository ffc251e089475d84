from pathlib import Path

import pytest

from fedlora.config import RunConfig
from fedlora.errors import BaseMismatchError, ConfigError, ModelError
from fedlora.models import (
    DEFAULT_TARGET_MODULES,
    apply_lora,
    check_fingerprint,
    check_model_spec,
    default_target_modules,
    load_base_model,
)

LABELS = ("x", "y")


@pytest.mark.parametrize(
    ("preset", "model_type", "targets"),
    [
        ("tiny-llama", "llama", ("q_proj", "v_proj")),
        ("tiny-gpt2", "gpt2", ("c_attn",)),
        ("tiny-bloom", "bloom", ("query_key_value",)),
        ("tiny-bert", "bert", ("query", "value")),
    ],
)
def test_presets_get_their_architecture_default_targets(preset, model_type, targets):
    base = load_base_model(preset, task="classification", labels=LABELS)
    model = apply_lora(base, RunConfig(task="classification"))
    assert base.model_type == model_type
    assert tuple(sorted(model.peft_config["default"].target_modules)) == tuple(sorted(targets))


@pytest.mark.parametrize("model_type", ["qwen2", "mistral"])
def test_llama_family_targets_q_and_v(model_type):
    assert DEFAULT_TARGET_MODULES[model_type] == ("q_proj", "v_proj")


def test_unknown_architecture_asks_for_explicit_targets():
    with pytest.raises(ConfigError, match="--lora-targets"):
        default_target_modules("mamba")


def test_explicit_lora_targets_must_exist():
    base = load_base_model("tiny-llama", task="sft")
    with pytest.raises(ConfigError, match="k_projection"):
        apply_lora(base, RunConfig(lora_targets=("k_projection",)))


def test_fingerprint_is_identical_across_loads():
    first = load_base_model("tiny-llama", task="sft").fingerprint
    assert load_base_model("tiny-llama", task="sft").fingerprint == first
    assert first.startswith("sha256:")


def test_fingerprint_differs_between_models_and_label_sets():
    llama = load_base_model("tiny-llama", task="classification", labels=LABELS).fingerprint
    gpt2 = load_base_model("tiny-gpt2", task="classification", labels=LABELS).fingerprint
    three = load_base_model("tiny-llama", task="classification", labels=("x", "y", "z")).fingerprint
    assert len({llama, gpt2, three}) == 3


def test_fingerprint_mismatch_is_refused_naming_both():
    with pytest.raises(
        BaseMismatchError, match="coordinator has sha256:aa, this node has sha256:bb"
    ):
        check_fingerprint(expected="sha256:aa", local="sha256:bb")


def test_bert_preset_cannot_do_sft():
    with pytest.raises(ModelError, match="tiny-bert supports only classification"):
        load_base_model("tiny-bert", task="sft")


def test_unknown_preset_lists_the_presets():
    with pytest.raises(
        ModelError, match="not a preset \\(tiny-bert, tiny-bloom, tiny-gpt2, tiny-llama\\)"
    ):
        check_model_spec("tiny-mamba")


def test_missing_model_directory_is_refused(tmp_path: Path):
    with pytest.raises(ModelError, match="model directory not found"):
        check_model_spec(str(tmp_path / "nowhere"))


def test_hub_id_form_is_accepted_without_loading():
    assert check_model_spec("Qwen/Qwen2.5-0.5B") == "hub"


@pytest.mark.parametrize(
    ("preset", "task"), [("tiny-llama", "sft"), ("tiny-gpt2", "classification")]
)
def test_local_directory_loads_the_same_weights(tmp_path: Path, preset, task):
    base = load_base_model(preset, task=task, labels=LABELS)
    base.model.save_pretrained(tmp_path / "model")
    base.tokenizer.save_pretrained(tmp_path / "model")

    loaded = load_base_model(str(tmp_path / "model"), task=task, labels=LABELS)

    assert check_model_spec(str(tmp_path / "model")) == "directory"
    assert loaded.fingerprint == base.fingerprint
    assert loaded.tokenizer("abc")["input_ids"] == base.tokenizer("abc")["input_ids"]


def test_unloadable_local_directory_is_a_model_error(tmp_path: Path):
    (tmp_path / "broken").mkdir()
    with pytest.raises(ModelError, match="cannot load model from local directory"):
        load_base_model(str(tmp_path / "broken"), task="sft")


def test_classification_needs_two_labels():
    with pytest.raises(ConfigError, match="at least 2 labels"):
        load_base_model("tiny-bert", task="classification", labels=("only",))

"""The tiny-llama preset adapts its output head for sft; every other default is unchanged."""

from __future__ import annotations

from fedlora.config import RunConfig
from fedlora.models import apply_lora, load_base_model


def _lora_modules(model_spec: str, task: str, **config: object) -> set[str]:
    labels = ("a", "b") if task == "classification" else ()
    base = load_base_model(model_spec, task=task, labels=labels)  # type: ignore[arg-type]
    peft = apply_lora(base, RunConfig(model=model_spec, task=task, **config))  # type: ignore[arg-type]
    return {
        name.split(".lora_A")[0].rsplit(".", 1)[-1]
        for name, _ in peft.named_parameters()
        if ".lora_A" in name
    }


def test_tiny_llama_sft_adapts_attention_and_the_output_head() -> None:
    assert _lora_modules("tiny-llama", "sft") == {"q_proj", "v_proj", "lm_head"}


def test_tiny_llama_classification_keeps_the_architecture_defaults() -> None:
    assert _lora_modules("tiny-llama", "classification", labels=("a", "b")) == {
        "q_proj",
        "v_proj",
    }


def test_named_targets_replace_the_preset_default() -> None:
    assert _lora_modules("tiny-llama", "sft", lora_targets=("q_proj",)) == {"q_proj"}


def test_other_presets_keep_their_architecture_defaults() -> None:
    assert _lora_modules("tiny-gpt2", "sft") == {"c_attn"}


def test_the_frozen_output_head_never_travels_nor_is_saved(tmp_path) -> None:
    from safetensors import safe_open

    from fedlora.adapters import adapter_state, save_peft_dir

    base = load_base_model("tiny-llama", task="sft")
    peft = apply_lora(base, RunConfig(model="tiny-llama", task="sft"))
    state = adapter_state(peft)
    assert any("lm_head.lora_B" in name for name in state)
    assert not [name for name in state if "lora_" not in name], "a base weight in the adapter"
    saved = save_peft_dir(peft, state, tmp_path / "adapter")
    with safe_open(str(saved / "adapter_model.safetensors"), "pt") as handle:
        assert sorted(handle.keys()) == sorted(
            f"base_model.model.{name}" if not name.startswith("base_model") else name
            for name in state
        )

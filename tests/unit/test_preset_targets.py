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

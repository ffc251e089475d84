"""Base models and LoRA: presets, hub ids, local directories and GGUF files, targets, fingerprints.

Every node must build bit-identical base weights (the adapter is only meaningful on the base it
was trained on). Models are created under a fixed seed, so randomly initialised parts such as a
fresh classification head are identical everywhere, and :func:`fingerprint` hashes the weights
so a node can prove it. A GGUF file is dequantised on load and fingerprinted like any other
model: the hash covers the weights as loaded, not the file's bytes.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BloomConfig,
    GPT2Config,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from fedlora.config import RunConfig, Task
from fedlora.errors import BaseMismatchError, ConfigError, ModelError
from fedlora.model_source import ModelSource, resolve_source
from fedlora.tokenizer import BOS_ID, EOS_ID, PAD_ID, TINY_VOCAB_SIZE, tiny_tokenizer

logger = logging.getLogger(__name__)

BASE_SEED = 1234
"""Seed under which every node creates base weights that are not loaded from a checkpoint."""

_TINY_MAX_POSITIONS = 512


def _tiny_llama() -> PretrainedConfig:
    return LlamaConfig(
        vocab_size=TINY_VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=_TINY_MAX_POSITIONS,
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        tie_word_embeddings=False,
    )


def _tiny_gpt2() -> PretrainedConfig:
    # GPT2Config defaults bos/eos to 50256, outside a tiny vocabulary.
    return GPT2Config(
        vocab_size=TINY_VOCAB_SIZE,
        n_embd=64,
        n_layer=2,
        n_head=4,
        n_positions=_TINY_MAX_POSITIONS,
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
    )


def _tiny_bloom() -> PretrainedConfig:
    return BloomConfig(
        vocab_size=TINY_VOCAB_SIZE,
        hidden_size=64,
        n_layer=2,
        n_head=4,
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
    )


def _tiny_bert() -> PretrainedConfig:
    return BertConfig(
        vocab_size=TINY_VOCAB_SIZE,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=_TINY_MAX_POSITIONS,
        pad_token_id=PAD_ID,
    )


@dataclass(frozen=True)
class Preset:
    """A built-in tiny model made from a config, with the offline byte-level tokenizer."""

    name: str
    make_config: Callable[[], PretrainedConfig]
    tasks: tuple[Task, ...]
    sft_head_targets: tuple[str, ...] = ()
    """LoRA targets added to the architecture's defaults for sft. A random-weight base's
    attention cannot move its random output layer: with LoRA on q, v alone the demo's held-out
    loss fell 1% in three DP rounds, with the output head adapted too 16% (docs/benchmarks.md)."""


PRESETS: dict[str, Preset] = {
    "tiny-llama": Preset(
        "tiny-llama", _tiny_llama, ("sft", "classification"), sft_head_targets=("lm_head",)
    ),
    "tiny-gpt2": Preset("tiny-gpt2", _tiny_gpt2, ("sft", "classification")),
    "tiny-bloom": Preset("tiny-bloom", _tiny_bloom, ("sft", "classification")),
    "tiny-bert": Preset("tiny-bert", _tiny_bert, ("classification",)),
}

DEFAULT_TARGET_MODULES: dict[str, tuple[str, ...]] = {
    "llama": ("q_proj", "v_proj"),
    "qwen2": ("q_proj", "v_proj"),
    "qwen3": ("q_proj", "v_proj"),
    "mistral": ("q_proj", "v_proj"),
    "mixtral": ("q_proj", "v_proj"),
    "gemma": ("q_proj", "v_proj"),
    "gemma2": ("q_proj", "v_proj"),
    "phi3": ("qkv_proj",),
    "gpt2": ("c_attn",),
    "bloom": ("query_key_value",),
    "falcon": ("query_key_value",),
    "gpt_neox": ("query_key_value",),
    "bert": ("query", "value"),
    "roberta": ("query", "value"),
    "distilbert": ("q_lin", "v_lin"),
}


@dataclass
class BaseModel:
    """A loaded base model with its tokenizer and weight fingerprint."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    model_type: str
    fingerprint: str
    labels: tuple[str, ...]
    default_targets: tuple[str, ...] = ()
    """LoRA targets when the run names none; ``()``: the architecture's defaults."""


def preset_names() -> tuple[str, ...]:
    """Names of the built-in tiny presets."""
    return tuple(sorted(PRESETS))


def load_base_model(
    spec: str,
    *,
    task: Task,
    labels: Sequence[str] = (),
    max_length: int = 512,
    gguf_file: str = "",
) -> BaseModel:
    """Load a base model for ``task`` from a preset, a local directory, a hub id or a GGUF file.

    Parameters
    ----------
    spec
        A preset (``tiny-llama``, ...), a directory holding a saved model and tokenizer, a
        Hugging Face hub id, or a ``.gguf`` file (dequantised to float32 on load).
    task
        ``"sft"`` loads a causal LM, ``"classification"`` a sequence classifier.
    labels
        Class names for classification (their order fixes the label ids).
    max_length
        Longest sequence the tokenizer will produce.
    gguf_file
        A GGUF file inside the directory or hub repository ``spec``; ``""`` for none.

    Returns
    -------
    BaseModel
        The model in eval mode on the CPU, its tokenizer and fingerprint.

    Raises
    ------
    ModelError
        For an unknown preset, a missing directory, a failed load, or a task the model
        cannot do.
    """
    if task == "classification" and len(labels) < 2:
        raise ConfigError(f"classification needs at least 2 labels, got {list(labels)}")
    preset = PRESETS.get(spec) if not gguf_file else None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(BASE_SEED)
        if preset is not None:
            model, tokenizer = _build_preset(preset, task, labels, max_length)
        else:
            source = _source(spec, gguf_file)
            model, tokenizer = _load_pretrained(source, task, labels, max_length)
    model.eval()
    model_type = str(getattr(model.config, "model_type", "unknown"))
    targets: tuple[str, ...] = ()
    if preset is not None and task == "sft" and preset.sft_head_targets:
        targets = (*default_target_modules(model_type), *preset.sft_head_targets)
    return BaseModel(model, tokenizer, model_type, fingerprint(model), tuple(labels), targets)


def load_run_base(config: RunConfig) -> BaseModel:
    """The base model of a run: :func:`load_base_model` with the run's model settings."""
    return load_base_model(
        config.model,
        task=config.task,
        labels=config.labels,
        max_length=config.max_length,
        gguf_file=config.gguf_file,
    )


def check_model_spec(
    spec: str, gguf_file: str = ""
) -> Literal["preset", "directory", "hub", "gguf"]:
    """Say what kind of model ``spec`` (with ``gguf_file``) names, without loading anything.

    Raises
    ------
    ModelError
        For a path that does not exist, a name that is neither a preset nor a hub id, a
        GGUF file that is missing or named twice, or a GGUF model without the gguf package.
    """
    if spec in PRESETS and not gguf_file:
        return "preset"
    return _source(spec, gguf_file).kind


def _source(spec: str, gguf_file: str) -> ModelSource:
    if spec in PRESETS:
        raise ModelError(
            f"gguf-file ({gguf_file}) needs a folder or hub id as model, not preset {spec}"
        )
    return resolve_source(spec, gguf_file, preset_names())


def _label_kwargs(labels: Sequence[str]) -> dict[str, Any]:
    return {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {label: index for index, label in enumerate(labels)},
    }


def _build_preset(
    preset: Preset, task: Task, labels: Sequence[str], max_length: int
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    if task not in preset.tasks:
        raise ModelError(
            f"preset {preset.name} supports only {', '.join(preset.tasks)}, not {task}"
        )
    config = preset.make_config()
    if task == "classification":
        for key, value in _label_kwargs(labels).items():
            setattr(config, key, value)
        model = AutoModelForSequenceClassification.from_config(config)
    else:
        model = AutoModelForCausalLM.from_config(config)
    tokenizer = tiny_tokenizer(min(max_length, _TINY_MAX_POSITIONS))
    return model, tokenizer


def _load_pretrained(
    source: ModelSource, task: Task, labels: Sequence[str], max_length: int
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    spec = source.describe()
    where: dict[str, Any] = {"local_files_only": source.local}
    if source.gguf_file is not None:
        where["gguf_file"] = source.gguf_file
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.location, **where)
        if task == "classification":
            model = AutoModelForSequenceClassification.from_pretrained(
                source.location, **where, **_label_kwargs(labels)
            )
        else:
            model = AutoModelForCausalLM.from_pretrained(source.location, **where)
    except (OSError, ValueError, KeyError, ImportError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"cannot load model from {spec}: {first_line}") from exc
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise ModelError(f"tokenizer of {spec} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    tokenizer.model_max_length = min(max_length, tokenizer.model_max_length or max_length)
    return model, tokenizer


def fingerprint(model: torch.nn.Module) -> str:
    """Hash every weight of ``model`` (names, dtypes, shapes and bytes) with SHA-256.

    Parameters
    ----------
    model
        The base model, before LoRA is applied.

    Returns
    -------
    str
        ``"sha256:<hex>"``; equal only for bit-identical weights under identical names.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return f"sha256:{digest.hexdigest()}"


def default_target_modules(model_type: str) -> tuple[str, ...]:
    """LoRA target modules for an architecture.

    Raises
    ------
    ConfigError
        When the architecture has no default; the message says how to choose targets.
    """
    try:
        return DEFAULT_TARGET_MODULES[model_type]
    except KeyError:
        known = ", ".join(sorted(DEFAULT_TARGET_MODULES))
        raise ConfigError(
            f"no default LoRA target modules for model type {model_type!r} (known: {known}); "
            "pass them with --lora-targets"
        ) from None


def apply_lora(base: BaseModel, config: RunConfig) -> PeftModel:
    """Wrap ``base`` with a fresh LoRA adapter as configured.

    The classification head is trainable and travels with the adapter (``modules_to_save``).
    LoRA weights are initialised under a fixed seed; the coordinator overwrites them with the
    global adapter before any training anyway.

    Raises
    ------
    ConfigError
        When a target module does not exist in the model.
    """
    targets = config.lora_targets or base.default_targets or default_target_modules(base.model_type)
    module_names = {name.rsplit(".", 1)[-1] for name, _ in base.model.named_modules()}
    missing = [target for target in targets if target not in module_names]
    if missing:
        raise ConfigError(
            f"LoRA target module(s) {', '.join(missing)} not found in {base.model_type} model"
        )
    lora_config = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(targets),
        task_type=TaskType.SEQ_CLS if config.task == "classification" else TaskType.CAUSAL_LM,
        fan_in_fan_out=base.model_type == "gpt2",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(BASE_SEED + 1)
        peft_model = get_peft_model(base.model, lora_config)
    if not isinstance(peft_model, PeftModel):
        raise ModelError("peft did not return a PeftModel")
    return peft_model


def check_fingerprint(*, expected: str, local: str) -> None:
    """Refuse to work on a base model that differs from the coordinator's.

    Raises
    ------
    BaseMismatchError
        Naming both fingerprints.
    """
    if expected != local:
        raise BaseMismatchError(
            f"base model mismatch: coordinator has {expected}, this node has {local}; every node "
            "must load the same base weights (same model, revision and dtype)"
        )

"""A tiny LLaMA written as a GGUF file, so the GGUF path is tested without a download.

The writer follows llama.cpp's ``convert_hf_to_gguf.py`` for a LLaMA: the tensors under GGUF names,
the query and key projections permuted the way llama.cpp stores them (transformers undoes it on
load), the hyper-parameters as ``llama.*`` metadata and a byte-level BPE vocabulary (every byte one
token, a few merges, an end-of-text token) as ``tokenizer.ggml.*``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.convert_slow_tokenizer import bytes_to_unicode

EOS = "<|endoftext|>"
_ROPE_THETA = 10000.0  # LlamaConfig's default
_MERGES = (("Ġ", "t"), ("h", "e"), ("Ġt", "he"))


def _vocabulary() -> tuple[list[str], list[int]]:
    tokens = [EOS, *bytes_to_unicode().values()]
    tokens += ["".join(pair) for pair in _MERGES]
    types = [3] + [1] * (len(tokens) - 1)  # 3: control, 1: normal
    return tokens, types


def tiny_llama_config(hidden_size: int = 32) -> LlamaConfig:
    """The config of the model :func:`write_tiny_llama_gguf` writes."""
    tokens, _ = _vocabulary()
    return LlamaConfig(
        vocab_size=len(tokens),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        bos_token_id=0,
        eos_token_id=0,
        tie_word_embeddings=False,
    )


def _permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    # llama.cpp's LlamaModel.permute: the inverse of transformers' _reverse_permute_weights.
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
_LAYER_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


def _gguf_name(name: str) -> str:
    if name in _NAMES:
        return _NAMES[name]
    _, _, index, rest = name.split(".", 3)
    module, kind = rest.rsplit(".", 1)
    return f"blk.{index}.{_LAYER_NAMES[module]}.{kind}"


def write_tiny_llama_gguf(
    path: Path, *, seed: int = 0, hidden_size: int = 32, quantize: bool = False
) -> LlamaForCausalLM:
    """Write a randomly initialised tiny LLaMA to ``path`` as GGUF.

    Parameters
    ----------
    path
        The ``.gguf`` file to write.
    seed
        Seed of the random weights; two seeds give two different models.
    hidden_size
        Width of the model (a multiple of 32 when quantising).
    quantize
        Store the matrices as Q8_0 (as llama.cpp would) instead of float32; norms stay float32.

    Returns
    -------
    LlamaForCausalLM
        The model that was written, for comparison with what loads back.
    """
    import gguf

    config = tiny_llama_config(hidden_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).eval()
    tokens, types = _vocabulary()
    head_dim = config.hidden_size // config.num_attention_heads

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(f"tiny-llama-{seed}")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(_ROPE_THETA)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([" ".join(pair) for pair in _MERGES])
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(0)
    writer.add_pad_token_id(0)
    writer.add_add_bos_token(False)
    for name, tensor in model.state_dict().items():
        data = tensor.detach().numpy().astype(np.float32)
        if name.endswith("q_proj.weight"):
            data = _permute(data, config.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            data = _permute(data, config.num_key_value_heads)
        data = np.ascontiguousarray(data)
        if quantize and data.ndim == 2:
            kind = gguf.GGMLQuantizationType.Q8_0
            writer.add_tensor(_gguf_name(name), gguf.quants.quantize(data, kind), raw_dtype=kind)
        else:
            writer.add_tensor(_gguf_name(name), data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return model

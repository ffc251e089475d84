"""An offline byte-level tokenizer for the built-in tiny presets.

Tiny presets must work with no download, on any text a site brings, so their tokenizer has no
learned vocabulary: one token per UTF-8 byte plus four special tokens (vocabulary 260). It is a
standard ``PreTrainedTokenizerFast``: it saves and loads with ``save_pretrained`` like any other.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")
VOCAB_SIZE = len(SPECIAL_TOKENS) + 256


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2's reversible map from bytes to printable characters, so BPE with no merges is a
    # lossless byte tokenizer.
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codepoints = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codepoints.append(256 + extra)
            extra += 1
    return {byte: chr(point) for byte, point in zip(printable, codepoints, strict=True)}


def byte_level_tokenizer(model_max_length: int = 512) -> PreTrainedTokenizerFast:
    """Build the byte-level tokenizer used by the tiny presets.

    Parameters
    ----------
    model_max_length
        Longest sequence the paired model accepts.

    Returns
    -------
    PreTrainedTokenizerFast
        Ids 0-3 are ``<pad> <s> </s> <unk>``; byte ``b`` is id ``4 + b``.
    """
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS)}
    for byte, char in sorted(_bytes_to_unicode().items()):
        vocab[char] = len(SPECIAL_TOKENS) + byte
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=model_max_length,
    )

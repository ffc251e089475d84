"""The offline tokenizer of the built-in tiny presets.

Tiny presets must work with no download, on any text a site brings. Their tokenizer is a
byte-level BPE of 2048 tokens shipped in ``fedlora/assets/tiny_tokenizer.json`` (built by
``scripts/build_tiny_tokenizer.py`` from the built-in scenarios' text): any UTF-8 text
tokenizes, falling back to bytes for unseen words. It is a standard ``PreTrainedTokenizerFast``
and saves and loads with ``save_pretrained`` like any other.
"""

from __future__ import annotations

from importlib import resources

from transformers import PreTrainedTokenizerFast

PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")
TINY_VOCAB_SIZE = 2048
TOKENIZER_ASSET = "tiny_tokenizer.json"


def tiny_tokenizer(model_max_length: int = 512) -> PreTrainedTokenizerFast:
    """Load the tiny presets' tokenizer.

    Parameters
    ----------
    model_max_length
        Longest sequence the paired model accepts.

    Returns
    -------
    PreTrainedTokenizerFast
        Ids 0-3 are ``<pad> <s> </s> <unk>``; the vocabulary has :data:`TINY_VOCAB_SIZE` tokens.
    """
    asset = resources.files("fedlora.assets").joinpath(TOKENIZER_ASSET)
    with resources.as_file(asset) as path:
        return PreTrainedTokenizerFast(
            tokenizer_file=str(path),
            pad_token="<pad>",
            bos_token="<s>",
            eos_token="</s>",
            unk_token="<unk>",
            model_max_length=model_max_length,
        )

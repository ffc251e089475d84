"""Device choice and bf16 decisions that hold on any machine."""

from __future__ import annotations

import pytest
import torch

from fedlora.config import RunConfig
from fedlora.device import bf16_enabled, resolve_device
from fedlora.errors import ConfigError
from fedlora.simulations.runner import _client_gpus


def test_cpu_choice_is_always_cpu():
    assert resolve_device("cpu") == torch.device("cpu")


def test_auto_follows_cuda_availability():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU refusal")
def test_cuda_without_a_gpu_is_refused():
    with pytest.raises(ConfigError, match="no CUDA device"):
        resolve_device("cuda")


def test_bf16_is_never_automatic_on_cpu():
    assert bf16_enabled("auto", torch.device("cpu")) is False
    assert bf16_enabled("off", torch.device("cpu")) is False


def test_bf16_on_is_refused_on_cpu_rather_than_ignored():
    with pytest.raises(ConfigError, match="does not support bfloat16"):
        bf16_enabled("on", torch.device("cpu"))


def test_cpu_runs_ask_ray_for_no_gpu():
    assert _client_gpus(RunConfig(device="cpu", sites=3)) == 0.0


def test_explicit_gpu_fraction_is_passed_through():
    assert _client_gpus(RunConfig(device="cpu", sites=3, client_gpus=0.25)) == 0.25

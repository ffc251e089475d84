"""Device placement and mixed precision: CUDA when present, CPU otherwise."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch

from fedlora.config import Bf16Choice, DeviceChoice
from fedlora.errors import ConfigError

logger = logging.getLogger(__name__)


def resolve_device(choice: DeviceChoice) -> torch.device:
    """Return the torch device for a ``device`` setting.

    Parameters
    ----------
    choice
        ``"auto"`` picks CUDA when available, ``"cpu"`` or ``"cuda"`` force one.

    Raises
    ------
    ConfigError
        When ``"cuda"`` is asked for on a machine without a CUDA device.
    """
    if choice == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    if choice == "cuda":
        raise ConfigError("device is 'cuda' but no CUDA device is available on this node")
    return torch.device("cpu")


def bf16_enabled(choice: Bf16Choice, device: torch.device) -> bool:
    """Decide whether to autocast to bfloat16 on ``device``.

    ``"auto"`` turns it on for CUDA devices that support bf16; ``"on"`` on a device without
    bf16 support is refused rather than silently ignored.
    """
    supported = device.type == "cuda" and torch.cuda.is_bf16_supported()
    if choice == "on" and not supported:
        raise ConfigError(f"bf16 is 'on' but device {device} does not support bfloat16")
    return supported if choice == "auto" else choice == "on"


@contextlib.contextmanager
def autocast(device: torch.device, enabled: bool) -> Iterator[None]:
    """Autocast to bfloat16 on ``device`` when ``enabled``; a no-op otherwise."""
    if not enabled:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
        yield

"""Adapter tensors into the ring Z/2^64 and back, with a stated error bound.

A site sends ``n · round(x · 2^bits / clip)`` for every value ``x`` of its update (``n``: its
example count, so that the sum is FedAvg's weighted sum) and ``n`` itself as the last element;
the values wrap modulo 2^64 as two's-complement integers, so masks add and cancel with NumPy's
uint64 arithmetic. The coordinator reads the unmasked sum as signed integers, divides by the
total ``N = Σ n`` and by the scale: each value of the weighted mean is then within
:attr:`Quantiser.error_bound` (half a step, ``clip / 2^(bits+1)``) of the float weighted mean of
the sites' values, before the cast back to the tensor's dtype.

Flower's quantiser (``flwr.common.secure_aggregation.quantization``) is not reused: it rounds
stochastically with NumPy's global generator (not reproducible, a step's error rather than half)
and returns int32, too narrow for example-weighted sums.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fedlora.adapters import AdapterState
from fedlora.errors import ConfigError
from fedlora.secagg.types import SecAggError

DEFAULT_BITS = 24
RING_HEADROOM_BITS = 62
"""``N · 2^bits`` stays below 2^62: a sum never wraps, and tampering that does is caught."""


@dataclass(frozen=True)
class TensorSlot:
    """Where one tensor lies in the flat vector."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def size(self) -> int:
        """The number of values."""
        return math.prod(self.shape)


def layout_of(state: Mapping[str, torch.Tensor]) -> list[TensorSlot]:
    """The vector layout of ``state``: its tensors in name order."""
    return [TensorSlot(name, tuple(state[name].shape), state[name].dtype) for name in sorted(state)]


class Quantiser:
    """Fixed-point encoding of example-weighted updates (see the module docstring).

    Parameters
    ----------
    clip
        Largest magnitude of a value a site may send (> 0): bounds each site's influence.
    bits
        Fraction bits: a step is ``clip / 2^bits``.
    """

    def __init__(self, clip: float, bits: int = DEFAULT_BITS) -> None:
        if not (math.isfinite(clip) and clip > 0):
            raise ConfigError(f"the quantisation range must be a positive number, got {clip}")
        if not 8 <= bits <= 40:
            raise ConfigError(f"quantisation bits must be 8-40, got {bits}")
        self.clip = float(clip)
        self.bits = bits
        self.scale = 2.0**bits / self.clip
        self.max_examples = 2 ** (RING_HEADROOM_BITS - bits)
        """Largest example count (of one site, and of a round's total)."""

    @property
    def error_bound(self) -> float:
        """Largest error of a value of the dequantised weighted mean: half a step."""
        return 0.5 / self.scale

    def encode(self, state: Mapping[str, torch.Tensor], num_examples: int) -> np.ndarray:
        """``state`` weighted by ``num_examples`` as a uint64 vector (the module docstring).

        Raises
        ------
        SecAggError
            When a value is not finite or beyond the range, or the count is out of range.
        """
        if not 0 <= num_examples <= self.max_examples:
            raise SecAggError(
                f"example count {num_examples} outside 0..{self.max_examples} for secure "
                "aggregation"
            )
        parts = []
        for slot in layout_of(state):
            values = state[slot.name].detach().to(torch.float64).reshape(-1).numpy()
            if not np.isfinite(values).all():
                raise SecAggError(f"tensor {slot.name} has non-finite values")
            peak = float(np.abs(values).max(initial=0.0))
            if peak > self.clip:
                raise SecAggError(
                    f"tensor {slot.name} has a value of magnitude {peak:.4g}, beyond the secure-"
                    f"aggregation range {self.clip:g}; raise secure-aggregation-range"
                )
            parts.append(np.rint(values * self.scale).astype(np.int64) * np.int64(num_examples))
        parts.append(np.array([num_examples], dtype=np.int64))
        return np.concatenate(parts).view(np.uint64)

    def decode(
        self, total: np.ndarray, layout: Sequence[TensorSlot], sites: int
    ) -> tuple[AdapterState, int]:
        """The weighted mean and total example count from the unmasked sum of ``sites`` inputs.

        Raises
        ------
        SecAggError
            When the sum has the wrong length, a total count outside ``1..max_examples``, or
            a value beyond ``N · 2^bits`` (a wrapped or tampered sum).
        """
        expected = sum(slot.size for slot in layout) + 1
        if total.shape != (expected,):
            raise SecAggError(f"the unmasked sum has {total.size} values, expected {expected}")
        signed = total.view(np.int64)
        count = int(signed[-1])
        if not 1 <= count <= self.max_examples:
            raise SecAggError(
                f"the unmasked example total {count} is outside 1..{self.max_examples}"
            )
        limit = count * 2**self.bits
        peak = int(np.abs(signed[:-1]).max(initial=0))
        if peak > limit:
            raise SecAggError(
                f"the unmasked sum is out of range ({peak} > {limit}) for {sites} site(s)"
            )
        mean = signed[:-1].astype(np.float64) / (count * self.scale)
        state: AdapterState = {}
        offset = 0
        for slot in layout:
            chunk = mean[offset : offset + slot.size].reshape(slot.shape)
            state[slot.name] = torch.from_numpy(chunk.copy()).to(slot.dtype)
            offset += slot.size
        return state, count

"""Adapter tensors into the ring Z/2^32 and back, with a stated error bound.

At train time a site flattens its update (its tensors in name order) and checks it: every
value finite and within ``clip`` (``secure-aggregation-range``), which bounds any site's
influence on the sum. When the round's example total ``N`` is known (the share stage), it
sends ``round(x · (n / N) · 2^bits / clip)`` for every value ``x`` (``n``: its example count),
as 32-bit two's-complement integers, so masks add and cancel with NumPy's uint32 arithmetic.
Pre-scaling by ``n / N`` (at most 1) keeps the sum within ``2^bits`` whatever ``N`` is, so the
ring needs no room for example counts and an input costs 4 bytes a value, as a float32 adapter.
The coordinator reads the unmasked sum as signed integers and divides by the scale and by the
summed weights ``W = Σ n / N`` of the sites in it: each value of the mean is then within
:meth:`Quantiser.error_bound` (half a step per site, ``k · clip / (2^(bits+1) · W)`` for ``k``
sites) of the float example-weighted mean, before the cast back to the tensor's dtype.

Flower's quantiser (``flwr.common.secure_aggregation.quantization``) is not reused: it rounds
stochastically with NumPy's global generator (not reproducible, a step's error rather than half)
and has no example weights.
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

DEFAULT_BITS = 29
"""Fraction bits: a sum of weights <= 1 then stays below 2^29 + k/2, far inside 2^31."""
RING = np.uint32


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
        if not 8 <= bits <= DEFAULT_BITS:
            raise ConfigError(f"quantisation bits must be 8-{DEFAULT_BITS}, got {bits}")
        self.clip = float(clip)
        self.bits = bits
        self.scale = 2.0**bits / self.clip

    def error_bound(self, sites: int, weight_sum: float) -> float:
        """Largest error of a value of the mean of ``sites`` inputs of summed weight ``W``."""
        return 0.5 * sites / (self.scale * weight_sum)

    def flatten(self, state: Mapping[str, torch.Tensor]) -> np.ndarray:
        """``state``'s values in layout order (float64), checked for what the ring can hold.

        Raises
        ------
        SecAggError
            Naming a tensor with a value that is not finite or beyond the range.
        """
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
            parts.append(values)
        return np.concatenate(parts) if parts else np.zeros(0)

    def encode(self, values: np.ndarray, weight: float) -> np.ndarray:
        """Flattened ``values`` (within the range) weighted by ``weight`` in [0, 1], in the ring.

        Raises
        ------
        SecAggError
            When the weight is outside [0, 1].
        """
        if not 0.0 <= weight <= 1.0:
            raise SecAggError(f"a site's weight must be in [0, 1], got {weight}")
        integers = np.rint(np.clip(values, -self.clip, self.clip) * (weight * self.scale))
        wrapped: np.ndarray = (integers.astype(np.int64) & 0xFFFFFFFF).astype(RING)
        return wrapped

    def decode(
        self, total: np.ndarray, layout: Sequence[TensorSlot], sites: int, weight_sum: float
    ) -> AdapterState:
        """The example-weighted mean from the unmasked sum of ``sites`` inputs.

        Raises
        ------
        SecAggError
            When the sum has the wrong length, the weights sum to nothing, or a value lies
            beyond what ``sites`` inputs of summed weight ``W`` can make (``W · 2^bits``, plus
            their rounding): a wrapped or tampered sum.
        """
        expected = sum(slot.size for slot in layout)
        if total.shape != (expected,):
            raise SecAggError(f"the unmasked sum has {total.size} values, expected {expected}")
        if not (math.isfinite(weight_sum) and 0 < weight_sum <= 1 + 1e-9):
            raise SecAggError(f"the sites' weights sum to {weight_sum}, not in (0, 1]")
        signed = total.astype(RING, copy=False).view(np.int32).astype(np.int64)
        limit = weight_sum * 2**self.bits + sites
        peak = int(np.abs(signed).max(initial=0))
        if peak > limit:
            raise SecAggError(f"the unmasked sum is out of range ({peak} > {limit:.0f})")
        mean = signed.astype(np.float64) / (self.scale * weight_sum)
        state: AdapterState = {}
        offset = 0
        for slot in layout:
            chunk = mean[offset : offset + slot.size].reshape(slot.shape)
            state[slot.name] = torch.from_numpy(chunk.copy()).to(slot.dtype)
            offset += slot.size
        return state

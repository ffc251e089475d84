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
_BLOCK = 1 << 16
"""Values :meth:`Quantiser.encode` scales at a time (512 KiB of float64: stays in the cache)."""
_NARROW = (torch.float32, torch.float16, torch.bfloat16)


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
        """``state``'s values in layout order, checked for what the ring can hold.

        float32 when every tensor is float32 or narrower (the cast is exact), float64
        otherwise: :meth:`encode` scales in float64 either way, so the encoding is the same.

        Raises
        ------
        SecAggError
            Naming a tensor with a value that is not finite or beyond the range.
        """
        layout = layout_of(state)
        narrow = all(slot.dtype in _NARROW for slot in layout)
        flat = np.empty(sum(slot.size for slot in layout), np.float32 if narrow else np.float64)
        offset = 0
        for slot in layout:
            values = flat[offset : offset + slot.size]
            torch.from_numpy(values).copy_(state[slot.name].detach().reshape(-1))
            offset += slot.size
            # max and min carry a NaN through, and neither allocates (unlike abs)
            peak = max(float(values.max(initial=0.0)), -float(values.min(initial=0.0)))
            if not math.isfinite(peak):
                raise SecAggError(f"tensor {slot.name} has non-finite values")
            if peak > self.clip:
                raise SecAggError(
                    f"tensor {slot.name} has a value of magnitude {peak:.4g}, beyond the secure-"
                    f"aggregation range {self.clip:g}; raise secure-aggregation-range"
                )
        return flat

    def encode(self, values: np.ndarray, weight: float) -> np.ndarray:
        """Flattened ``values`` (within the range) weighted by ``weight`` in [0, 1], in the ring.

        Each value is clipped to the range, scaled and rounded in float64 (exact integers up
        to 2^53, far above 2^bits) a cache-sized block at a time, then stored as int32 and
        read as uint32: two's complement is the ring's wraparound.

        Raises
        ------
        SecAggError
            When the weight is outside [0, 1] or a value is NaN.
        """
        if not 0.0 <= weight <= 1.0:
            raise SecAggError(f"a site's weight must be in [0, 1], got {weight}")
        values = np.asarray(values).reshape(-1)
        factor = weight * self.scale
        limit = self.clip * factor  # clip(x) * factor, as x * factor is monotonic
        encoded = np.empty(values.size, dtype=np.int32)
        scratch = np.empty(min(values.size, _BLOCK), dtype=np.float64)
        for start in range(0, values.size, _BLOCK):
            block = scratch[: min(_BLOCK, values.size - start)]
            np.multiply(values[start : start + block.size], factor, out=block, dtype=np.float64)
            np.clip(block, -limit, limit, out=block)
            np.rint(block, out=block)
            if np.isnan(block.max()):
                raise SecAggError("an update to encode has a NaN value")
            encoded[start : start + block.size] = block
        return encoded.view(RING)

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
        signed = total.astype(RING, copy=False).view(np.int32)
        limit = weight_sum * 2**self.bits + sites
        # as Python integers: -(-2^31) does not fit int32
        peak = max(int(signed.max(initial=0)), -int(signed.min(initial=0)))
        if peak > limit:
            raise SecAggError(f"the unmasked sum is out of range ({peak} > {limit:.0f})")
        divisor = self.scale * weight_sum
        state: AdapterState = {}
        offset = 0
        for slot in layout:
            chunk = np.divide(signed[offset : offset + slot.size], divisor, dtype=np.float64)
            state[slot.name] = torch.from_numpy(chunk.reshape(slot.shape)).to(slot.dtype)
            offset += slot.size
        return state

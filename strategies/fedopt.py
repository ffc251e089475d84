"""Server-side optimisers on adapter deltas: the base of FedAdam, FedYogi and FedAvgM.

Reddi et al. 2021, "Adaptive Federated Optimization" (arXiv:2003.00295), with the update rules
of Flower's ``flwr.serverapp.strategy`` ``FedAdam``, ``FedYogi`` and ``FedAvgM`` (flwr 1.41),
applied to each adapter tensor separately. In round ``t`` (``t = 1`` for the first round this
optimiser aggregates), with ``x`` a tensor of the global adapter the sites started from, ``x_i``
site ``i``'s tensor and ``n_i`` its training examples, the pseudo-gradient is

    ``Δ = sum_i n_i x_i / sum_i n_i - x``

(Flower's ``delta_t``; it points *towards* the sites, so it is added, never subtracted). All
arithmetic, and the moments kept between rounds, are float64; each result tensor is cast back
to the dtype (and device) of its global tensor and checked for NaN and infinity. ``Δ²``,
``sqrt`` and the division are element-wise; ``sign(0) = 0``. The moments start at zero.
The update rules, one strategy per module as in Flower: :mod:`fedlora.strategies.fedadam`,
:mod:`fedlora.strategies.fedyogi`, :mod:`fedlora.strategies.fedavgm`.

The moments (per tensor name) and the round count ``t`` persist across rounds; they can be
read with :meth:`ServerOptimizer.state_dict` and written to one safetensors file with
:meth:`ServerOptimizer.save_state` (:mod:`fedlora.strategies.optimizer_state`), so that a resumed
run continues bit-identically.
"""

from __future__ import annotations

import abc
import math
from pathlib import Path
from typing import Any

import torch

from fedlora.adapters import AdapterState
from fedlora.errors import AdapterError, ConfigError
from fedlora.strategies.base import SiteUpdate, Strategy, check_finite
from fedlora.strategies.helpers import example_weights, weighted_mean
from fedlora.strategies.optimizer_state import Moments, read_state, write_state

__all__ = ["FedOpt", "Moments", "ServerOptimizer"]


def positive(label: str, value: float) -> float:
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{label} must be > 0, got {value}")
    return value


def unit_interval(label: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"{label} must be in [0, 1), got {value}")
    return value


class ServerOptimizer(Strategy):
    """A strategy that takes an optimiser step on the global adapter with the pseudo-gradient.

    Subclasses name their moments in ``_slots`` and implement :meth:`hyperparameters` and
    ``_step_tensor``; this class computes ``Δ`` (see the module docstring), keeps the moments
    and the round count, and saves and loads them.
    """

    name = "server-optimizer"
    _slots: tuple[str, ...] = ()

    def __init__(self) -> None:
        self._step = 0
        self._moments: Moments = {slot: {} for slot in self._slots}

    @property
    def step(self) -> int:
        """Rounds aggregated so far (``t`` of the last round; 0 before the first)."""
        return self._step

    @abc.abstractmethod
    def hyperparameters(self) -> dict[str, float]:
        """The settings a saved state must have been written with, by name."""

    @abc.abstractmethod
    def _step_tensor(
        self, x: torch.Tensor, mean: torch.Tensor, moments: dict[str, torch.Tensor], t: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Return the next ``x`` and the new moments of one tensor (all float64, on the CPU)."""

    def aggregate(self, global_state: AdapterState, updates: list[SiteUpdate]) -> AdapterState:
        """Return the global adapter after one optimiser step (see the module docstring).

        Parameters
        ----------
        global_state
            The adapter the sites started this round from.
        updates
            The round's updates; each must hold exactly the tensors of ``global_state``, with
            the same shapes.

        Returns
        -------
        AdapterState
            The next global adapter, each tensor in its global tensor's dtype and device.

        Raises
        ------
        AdapterError
            When an update lacks a tensor, has an extra one or one of another shape, when the
            optimiser's moments are for other tensors, or when no update has any example.
        FloatingPointError
            When a result tensor or a moment is not finite; the optimiser state is unchanged.
        """
        weights = example_weights(updates)
        _check_updates(global_state, updates)
        if self._step > 0:
            self._check_moments(global_state, "the optimiser state")
        t = self._step + 1
        result: AdapterState = {}
        moments: Moments = {slot: {} for slot in self._slots}
        for name, reference in global_state.items():
            x = reference.detach().to(device="cpu", dtype=torch.float64)
            states = [
                {name: update.state[name].detach().to(device="cpu", dtype=torch.float64)}
                for update in updates
            ]
            mean = weighted_mean(states, weights)[name]
            previous = {
                slot: self._moments[slot].get(name, torch.zeros_like(x)) for slot in self._slots
            }
            new_x, new_moments = self._step_tensor(x, mean, previous, t)
            result[name] = new_x.to(device=reference.device, dtype=reference.dtype)
            for slot in self._slots:
                moments[slot][name] = new_moments[slot]
        check_finite(result)
        for slot in self._slots:
            check_finite({f"{slot} moment of {name}": m for name, m in moments[slot].items()})
        # Committed only now, so that a refused round leaves the state as it was.
        self._moments = moments
        self._step = t
        return result

    def state_dict(self) -> dict[str, Any]:
        """The optimiser's state: copies of its moments, its round count and its settings.

        Returns
        -------
        dict
            ``kind`` (the class name), ``step``, ``hyperparameters`` and ``moments``, the
            latter mapping each moment's slot (``m``, ``v`` or ``momentum``) to float64 CPU
            tensors by adapter tensor name.
        """
        return {
            "kind": type(self).__name__,
            "step": self._step,
            "hyperparameters": self.hyperparameters(),
            "moments": {
                slot: {name: tensor.clone() for name, tensor in by_name.items()}
                for slot, by_name in self._moments.items()
            },
        }

    def load_state_dict(
        self, state: dict[str, Any], *, reference: AdapterState | None = None
    ) -> None:
        """Replace the optimiser's state with ``state`` (as returned by :meth:`state_dict`).

        Parameters
        ----------
        state
            The state to continue from; its tensors are copied.
        reference
            The global adapter the state will be applied to; when given, the moments must have
            exactly its tensor names and shapes. :meth:`aggregate` checks this in any case.

        Raises
        ------
        ConfigError
            When the state is from another optimiser kind, has other hyper-parameters, or is
            malformed.
        AdapterError
            When the moments do not match ``reference`` or do not agree among themselves.
        """
        self._load(state, "optimiser state", reference)

    def save_state(self, path: Path) -> None:
        """Write the state atomically to the safetensors file ``path``.

        The format is :func:`fedlora.strategies.optimizer_state.write_state`'s: the moments as
        float64 tensors, the kind, step and hyper-parameters as metadata, under a SHA-256 digest.
        """
        write_state(
            path,
            kind=type(self).__name__,
            name=self.name,
            step=self._step,
            hyperparameters=self.hyperparameters(),
            moments=self._moments,
        )

    def load_state(self, path: Path, *, reference: AdapterState | None = None) -> None:
        """Replace the state with the one :meth:`save_state` wrote to ``path``.

        Parameters
        ----------
        path
            The safetensors file.
        reference
            As for :meth:`load_state_dict`.

        Raises
        ------
        ConfigError
            When the file is missing, truncated or corrupt (its digest does not match), or
            holds the state of another optimiser kind or of other hyper-parameters.
        AdapterError
            When its moments do not match ``reference`` or do not agree among themselves.
        """
        self._load(read_state(path), f"optimiser state {path}", reference)

    def _load(self, state: dict[str, Any], source: str, reference: AdapterState | None) -> None:
        kind = type(self).__name__
        if state.get("kind") != kind:
            raise ConfigError(f"{source} is from {state.get('kind')}, not {kind}")
        saved = state.get("hyperparameters")
        if saved != self.hyperparameters():
            raise ConfigError(
                f"{source} was saved with hyper-parameters {saved}, "
                f"not this optimiser's {self.hyperparameters()}"
            )
        step = state.get("step")
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ConfigError(f"{source} has an invalid step {step!r}")
        raw = state.get("moments")
        if not isinstance(raw, dict):
            raise ConfigError(f"{source} has no moments")
        extra = sorted(set(raw) - set(self._slots))
        if extra:
            raise ConfigError(f"{source} has moments {extra} that {kind} does not keep")
        moments: Moments = {}
        for slot in self._slots:
            by_name = raw.get(slot, {})
            if not isinstance(by_name, dict):
                raise ConfigError(f"{source}: moment {slot!r} is not a mapping of tensors")
            moments[slot] = {}
            for name, tensor in by_name.items():
                if not isinstance(tensor, torch.Tensor) or tensor.dtype != torch.float64:
                    raise ConfigError(f"{source}: {slot} moment of {name} is not a float64 tensor")
                if not bool(torch.isfinite(tensor).all()):
                    raise ConfigError(f"{source}: {slot} moment of {name} has non-finite values")
                moments[slot][name] = tensor.detach().to("cpu").clone()
        if step == 0 and any(moments.values()):
            raise ConfigError(f"{source} has moments but no aggregated round")
        first = moments[self._slots[0]] if self._slots else {}
        for slot in self._slots[1:]:
            if {n: t.shape for n, t in moments[slot].items()} != {
                n: t.shape for n, t in first.items()
            }:
                raise AdapterError(f"{source}: its moments disagree on tensor names or shapes")
        previous = (self._step, self._moments)
        self._step, self._moments = step, moments
        if reference is not None and step > 0:
            try:
                self._check_moments(reference, source)
            except AdapterError:
                self._step, self._moments = previous
                raise

    def _check_moments(self, global_state: AdapterState, source: str) -> None:
        for slot in self._slots:
            held = self._moments[slot]
            missing = sorted(set(global_state) - set(held))
            extra = sorted(set(held) - set(global_state))
            if missing or extra:
                raise AdapterError(
                    f"{source} does not match the global adapter: "
                    f"missing tensors {missing[:3]}, unexpected tensors {extra[:3]}"
                )
            for name, tensor in held.items():
                if tensor.shape != global_state[name].shape:
                    raise AdapterError(
                        f"{source} does not match the global adapter: tensor {name} has shape "
                        f"{tuple(tensor.shape)} there, {tuple(global_state[name].shape)} in the "
                        "adapter"
                    )


class FedOpt(ServerOptimizer):
    """FedAdam's and FedYogi's shared settings: ``η``, ``β1``, ``β2``, ``τ``."""

    _slots = ("m", "v")

    def __init__(
        self,
        server_lr: float = 0.01,
        beta1: float = 0.9,
        beta2: float = 0.99,
        tau: float = 1e-9,
    ) -> None:
        self.server_lr = positive("server learning rate", server_lr)
        self.beta1 = unit_interval("beta1", beta1)
        self.beta2 = unit_interval("beta2", beta2)
        self.tau = positive("tau", tau)
        super().__init__()

    def hyperparameters(self) -> dict[str, float]:
        """``server_lr``, ``beta1``, ``beta2`` and ``tau``."""
        return {
            "server_lr": self.server_lr,
            "beta1": self.beta1,
            "beta2": self.beta2,
            "tau": self.tau,
        }


def _check_updates(global_state: AdapterState, updates: list[SiteUpdate]) -> None:
    # Upstream validation already guarantees this; a gap here would silently skew the moments.
    for update in updates:
        missing = sorted(set(global_state) - set(update.state))
        if missing:
            raise AdapterError(
                f"update from site {update.site} lacks {len(missing)} adapter tensor(s), "
                f"e.g. {missing[0]}"
            )
        extra = sorted(set(update.state) - set(global_state))
        if extra:
            raise AdapterError(
                f"update from site {update.site} has {len(extra)} unexpected tensor(s), "
                f"e.g. {extra[0]}"
            )
        for name, reference in global_state.items():
            if update.state[name].shape != reference.shape:
                raise AdapterError(
                    f"update from site {update.site}: tensor {name} has shape "
                    f"{tuple(update.state[name].shape)}, expected {tuple(reference.shape)}"
                )

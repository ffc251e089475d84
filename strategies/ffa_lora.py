"""FFA-LoRA: federated LoRA with the ``A`` factors frozen (Sun et al., ICLR 2024).

Sun, Qin, Li and Ding, "Improving LoRA in privacy-preserving federated learning" (ICLR 2024):
every site starts from the same global adapter and keeps each module's ``A`` (``r × d_in``)
frozen at its shared, randomly initialised value; only ``B`` (``d_out × r``) and the non-factor
tensors (a classification head) are trained and sent. :func:`~fedlora.lora_factors.trained_names`
(in the core, re-exported here) lists exactly those tensors, so the client (what it trains and
sends) and the server (what it expects) agree.

Why the aggregate is exact
    A module adds ``s · B·A`` to its base weight. FedAvg over both factors averages ``A`` and
    ``B`` separately, and ``mean_i(B_i) · mean_i(A_i) != mean_i(B_i · A_i)`` in general (the
    cross terms ``B_i · A_j``, ``i != j``, do not cancel). With ``A`` shared the product is
    linear in ``B``::

        s · (sum_i w_i B_i) · A = sum_i w_i (s · B_i · A)

    so the example-weighted mean of the ``B_i`` gives exactly the weighted mean of the sites'
    updates ``s · B_i · A``. It also halves the payload (``r · d_out`` values per module instead
    of ``r · (d_in + d_out)``). ``A`` must be non-zero (PEFT's default initialisation is
    Kaiming-uniform ``A`` and zero ``B``); with ``A = 0`` no ``B`` can change the model.
"""

from __future__ import annotations

from fedlora.adapters import AdapterState, check_compatible
from fedlora.errors import AdapterError
from fedlora.lora_factors import frozen_names, is_lora_a, trained_names, trained_state
from fedlora.strategies.base import SiteUpdate, Strategy, check_finite
from fedlora.strategies.helpers import example_weights, weighted_mean

__all__ = ["FfaLora", "frozen_names", "trained_names", "trained_state"]


class FfaLora(Strategy):
    """FFA-LoRA aggregation: example-weighted mean of ``B`` and heads, ``A`` kept as is.

    See the module docstring for the method and why the aggregate of the products is exact.
    Each update carries exactly the tensors of :func:`trained_names` of the global adapter
    (no ``lora_A``); the next global adapter is the global adapter with every such tensor
    replaced by ``sum_i n_i t_i / sum_i n_i`` and every ``lora_A`` unchanged.
    """

    name = "ffa-lora"

    def update_reference(self, update: AdapterState, global_state: AdapterState) -> AdapterState:
        """The trained tensors of the global adapter: a site sends only those."""
        del update
        return trained_state(global_state)

    def aggregate(self, global_state: AdapterState, updates: list[SiteUpdate]) -> AdapterState:
        """Return the next global adapter (see the class docstring).

        Parameters
        ----------
        global_state
            The full adapter (``A`` and ``B``) the sites started this round from.
        updates
            The sites' trained tensors (``B`` and non-factor tensors only).

        Raises
        ------
        AdapterError
            For an update that carries a ``lora_A`` tensor, lacks a ``lora_B`` or another
            trained tensor, carries an unknown tensor, or has a mis-shaped one; or when no
            update reports a training example.
        FloatingPointError
            When the aggregate has a NaN or infinity.
        """
        trained = trained_names(global_state)
        expected = {name: global_state[name] for name in trained}
        for update in updates:
            carried_a = sorted(name for name in update.state if is_lora_a(name))
            if carried_a:
                raise AdapterError(
                    f"site {update.site} sent frozen LoRA A tensor(s) {carried_a[:3]}; "
                    "FFA-LoRA sites send only lora_B and non-factor tensors"
                )
            missing = [name for name in trained if name not in update.state]
            if missing:
                raise AdapterError(
                    f"site {update.site} did not send trained tensor(s) {missing[:3]}"
                )
            try:
                check_compatible(expected, update.state)
            except AdapterError as exc:
                raise AdapterError(f"site {update.site}: {exc}") from None
        mean = weighted_mean(
            [{name: update.state[name] for name in trained} for update in updates],
            example_weights(updates),
        )
        aggregate = {
            name: mean[name] if name in mean else tensor.clone()
            for name, tensor in global_state.items()
        }
        check_finite(aggregate)
        return aggregate

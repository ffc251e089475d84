"""The sites' side of the strategies: FedProx's proximal gradient and FFA-LoRA's frozen A."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from flwr.app import Context, Message, RecordDict
from opacus import PrivacyEngine
from torch.utils.data import DataLoader, TensorDataset

from fedlora.adapters import adapter_state, pack_adapter, unpack_adapter
from fedlora.clients.app import make_client_app
from fedlora.clients.dp_training import _private_step
from fedlora.clients.proximal import ProximalTerm, proximal_term
from fedlora.config import RunConfig
from fedlora.lora_factors import trained_names
from fedlora.models import apply_lora, load_base_model
from fedlora.protocol import make_instruction, read_privacy, reply_adapter
from fedlora.sites import SiteSpec
from tests.conftest import write_jsonl


def test_proximal_gradient_is_mu_times_the_distance_from_the_global_weights() -> None:
    weight = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    term = ProximalTerm([weight], mu=0.5)
    with torch.no_grad():
        weight.add_(torch.tensor([0.4, 0.2]))  # moved away from the global [1, -2]
    weight.grad = torch.tensor([1.0, 1.0])  # the data gradient

    term.add_gradient()

    assert torch.allclose(weight.grad, torch.tensor([1.0 + 0.5 * 0.4, 1.0 + 0.5 * 0.2]))
    assert term.value() == pytest.approx(0.25 * (0.4**2 + 0.2**2))


def test_fedprox_mu_comes_from_the_round_config_and_covers_trained_parameters_only() -> None:
    model = torch.nn.Linear(2, 1)
    model.bias.requires_grad_(False)

    term = proximal_term(model, RunConfig(strategy="fedprox", proximal_mu=0.2))

    assert term is not None and term.mu == 0.2 and term.parameters == [model.weight]
    assert proximal_term(model, RunConfig(strategy="fedavg")) is None


def _dp_sgd_step(mu: float | None) -> torch.Tensor:
    """One DP-SGD step (σ = 0, C huge: the clipped mean gradient) from a displaced weight."""
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1, bias=False)
    data = DataLoader(TensorDataset(torch.ones(4, 2), torch.zeros(4, 1)), batch_size=4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    module, dp_optimizer, _ = PrivacyEngine().make_private(
        module=model, optimizer=optimizer, data_loader=data, noise_multiplier=0.0, max_grad_norm=1e6
    )
    proximal = ProximalTerm([model.weight], mu) if mu is not None else None
    with torch.no_grad():
        model.weight.add_(1.0)  # w - w_global = 1 everywhere
    before = model.weight.detach().clone()
    dp_optimizer.zero_grad()
    loss = ((module(torch.ones(4, 2)) - 0.0) ** 2).mean()
    loss.backward()
    _private_step(dp_optimizer, proximal)
    return model.weight.detach() - before


def test_dp_step_adds_the_proximal_gradient_after_clipping_and_noise() -> None:
    plain = _dp_sgd_step(None)
    proximal = _dp_sgd_step(0.3)

    # The applied update differs by exactly -lr * mu * (w - w_global) = -0.1 * 0.3 * 1.
    assert torch.allclose(proximal - plain, torch.full_like(plain, -0.03), atol=1e-6)


def test_ffa_lora_site_trains_only_b_and_sends_only_what_it_trains(
    tmp_path: Path, flower_identity: None
) -> None:
    config = RunConfig(
        strategy="ffa-lora",
        max_length=64,
        sites=1,
        rounds=1,  # σ 0.5 fits budget 10 for one round; a run that cannot finish is declined
        batch_size=2,
        noise_multiplier=0.5,
        accountant="rdp",
        out=str(tmp_path),
    )
    data = write_jsonl(
        tmp_path / "a.jsonl", [{"prompt": f"q{i}", "response": "a"} for i in range(8)]
    )
    base = load_base_model("tiny-llama", task="sft", max_length=64)
    initial = adapter_state(apply_lora(base, config))
    content = make_instruction(
        pack_adapter(initial),
        config,
        server_round=1,
        base_fingerprint=base.fingerprint,
        run_id="ffa",
    )
    context = Context(
        run_id=1,
        node_id=1,
        node_config={"partition-id": 0, "num-partitions": 1},
        state=RecordDict(),
        run_config={},
    )
    app = make_client_app(lambda _context, _config: SiteSpec("site-a", data))

    reply = app(Message(content=content, dst_node_id=1, message_type="train"), context)

    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    returned = unpack_adapter(reply_adapter(reply) or b"")
    assert sorted(returned) == sorted(trained_names(initial))
    assert not any(".lora_A." in name for name in returned)
    assert any(not torch.equal(returned[k], initial[k]) for k in returned)
    assert read_privacy(reply) is not None  # a DP round, accounted as usual

"""Central DP on a secure sum: the sites clip before masking, the coordinator noises the sum.

The sites run their real side (``secure_train_reply`` and ``handle_secure_stage``), the
coordinator its real side (:class:`fedlora.server.secure_round.SecureAggregation`); a small
relay stands in for the grid. The result is compared with the plain central-DP path fed the
sites' raw updates.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from flwr.app import Context, Message, RecordDict

from fedlora.adapters import AdapterState, pack_adapter, packed_from_array_record
from fedlora.clients.secure_site import STATE_KEY, handle_secure_stage, secure_train_reply
from fedlora.config import RunConfig
from fedlora.errors import AdapterError, ConfigError, FedloraError
from fedlora.privacy.update_clipping import clip_delta, clip_for_secure_sum, quantisation_slack
from fedlora.protocol import Instruction
from fedlora.replies import parse_reply
from fedlora.secagg import Quantiser, SiteSession
from fedlora.secagg.quantise import layout_of
from fedlora.secure_messages import MESSAGE_TYPE, read_stage
from fedlora.server.exchange import PhaseResult
from fedlora.server.secure_round import SecureAggregation, SecureSum
from fedlora.strategies import SiteUpdate, SummedUpdate
from fedlora.strategies.central_dp import CentralDP, read_server_ledger
from fedlora.strategies.fedavg import FedAvg

CLIP = 0.5
SITES = 3
GLOBAL = {
    "lora_A": torch.tensor([[0.25, -0.5, 1.0], [0.0, 0.125, -1.0]]),
    "lora_B": torch.tensor([0.5, -0.25, 0.75, 0.0]),
}
# Site 0's update is far over the clip norm, site 1's within it, site 2's a little over; the
# example counts differ widely, and central DP must weigh the sites the same regardless.
STEPS = {
    "site-0": 40.0,
    "site-1": 0.05,
    "site-2": 0.9,
}
EXAMPLES = {"site-0": 5, "site-1": 50, "site-2": 500}


@pytest.fixture(autouse=True)
def _identity(flower_identity: None) -> None:
    """Every test here builds Messages."""


def _states(start: AdapterState = GLOBAL) -> dict[str, AdapterState]:
    generator = torch.Generator().manual_seed(11)
    states = {}
    for site, size in STEPS.items():
        directions = {n: torch.randn(t.shape, generator=generator) for n, t in GLOBAL.items()}
        norm = math.sqrt(sum(float(d.pow(2).sum()) for d in directions.values()))
        states[site] = {n: start[n] + size * directions[n] / norm for n in GLOBAL}
    return states


def _config(**overrides: object) -> RunConfig:
    settings: dict[str, object] = {
        "secure_aggregation": True,
        "central_dp": "fixed",
        "central_clip_norm": CLIP,
        "central_noise_multiplier": 1.0,
        "sites": SITES,
    }
    return RunConfig(**{**settings, **overrides})  # type: ignore[arg-type]


class _Relay:
    """The grid between the coordinator and the sites' real secure-stage handler."""

    def __init__(self, contexts: dict[str, Context], drop: dict[str, set[str]]) -> None:
        self.contexts, self.drop = contexts, drop
        self.binding = SimpleNamespace(names=dict(enumerate(contexts)))

    def relay(self, contents, server_round, stage, result):
        del server_round, result
        replies = {}
        for node, content in contents.items():
            site = self.binding.names[node]
            if site in self.drop.get(stage, set()):
                continue
            message = Message(content, dst_node_id=node, message_type=MESSAGE_TYPE)
            assert read_stage(message)[0] == stage
            replies[site] = handle_secure_stage(message, self.contexts[site])
        return replies


def _secure_sum(
    config: RunConfig,
    states: dict[str, AdapterState],
    drop: dict[str, set[str]] | None = None,
    global_state: AdapterState = GLOBAL,
) -> SecureSum:
    """One secure round through both sides' real code; the coordinator's one update."""
    adapter = pack_adapter(global_state, config.wire_dtype)
    instruction = Instruction(config, 2, "fingerprint", adapter, "run-7", False)
    contexts, trained = {}, PhaseResult()
    for site, state in states.items():
        if site in (drop or {}).get("advertise", set()):
            continue  # it did not train this round (declined, failed): no advertisement
        contexts[site] = Context(
            run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={}
        )
        metrics = {"num-examples": float(EXAMPLES[site])}
        content = secure_train_reply(contexts[site], instruction, site, state, metrics, None, None)
        reply = parse_reply(Message(content, dst_node_id=1, message_type="train"), "train")
        assert reply.state is None  # the coordinator gets no adapter
        trained.replies[site] = reply
    secure = SecureAggregation(_Relay(contexts, drop or {}), CentralDP(FedAvg(), mode="fixed",
                               noise_multiplier=1.0, clip_norm=CLIP, sites=SITES), config)  # type: ignore[arg-type]  # fmt: skip
    ((update, _, _),) = secure.updates(trained, global_state, 2, "run-7")
    assert isinstance(update, SecureSum)
    for context in contexts.values():  # each site weighed 1 / sites, whoever took part
        kept = SiteSession.restore(packed_from_array_record(context.state[STATE_KEY]))
        assert (kept.num_examples, kept.total_examples) == (1, SITES)
    return update


def _flat(state: AdapterState) -> np.ndarray:
    return np.concatenate([state[n].to(torch.float64).numpy().ravel() for n in GLOBAL])


def _clipped(state: AdapterState, norm: float, start: AdapterState = GLOBAL) -> np.ndarray:
    delta = _flat(state) - _flat(start)
    return delta * min(1.0, norm / float(np.linalg.norm(delta)))


def _values() -> int:
    return sum(t.numel() for t in GLOBAL.values())


def test_each_site_clips_before_masking_and_the_unmasked_sum_is_the_sum_of_clipped_updates():
    config = _config()
    states = _states()
    update = _secure_sum(config, states)

    slack = quantisation_slack(_values(), SITES, Quantiser(config.secure_aggregation_range))
    assert 0 < slack < 1e-6
    mean = _flat(update.state) - _flat(update.start)
    expected = sum(_clipped(states[site], CLIP - slack) for site in STEPS) / SITES
    # Within the quantisation bound of a value of the mean (half a step at weight 1/sites).
    bound = Quantiser(config.secure_aggregation_range).error_bound(SITES, 1.0)
    assert float(np.abs(mean - expected).max()) <= bound
    # Uniform weights, not 5 : 50 : 500; and site 0 did not enter unclipped.
    weighted = sum(EXAMPLES[s] * _clipped(states[s], CLIP) for s in STEPS) / sum(EXAMPLES.values())
    unclipped = sum(_flat(states[s]) - _flat(GLOBAL) for s in STEPS) / SITES
    assert float(np.abs(mean - weighted).max()) > 1e-2
    assert float(np.abs(mean - unclipped).max()) > 1.0
    assert update.sites == tuple(STEPS) and update.clip_norm == CLIP
    assert all(update.state[n].dtype == torch.float64 for n in GLOBAL)  # no cast before noise


@pytest.mark.parametrize("drop", [{}, {"mask": {"site-1"}}, {"advertise": {"site-2"}}])
def test_the_secure_release_and_its_ledger_equal_the_plain_central_dp_run(
    tmp_path: Path, drop: dict[str, set[str]]
) -> None:
    config = _config()
    states = _states()
    present = [site for site in STEPS if not any(site in sites for sites in drop.values())]
    plain = CentralDP(FedAvg(), mode="fixed", noise_multiplier=1.0, clip_norm=CLIP, sites=SITES,
                      ledger_path=tmp_path / "plain" / "server-ledger.jsonl", seed=5)  # fmt: skip
    secure = CentralDP(FedAvg(), mode="fixed", noise_multiplier=1.0, clip_norm=CLIP, sites=SITES,
                       ledger_path=tmp_path / "secure" / "server-ledger.jsonl", seed=5)  # fmt: skip
    slack = quantisation_slack(_values(), SITES, Quantiser(config.secure_aggregation_range))
    for _ in range(2):
        updates = [SiteUpdate(site, states[site], EXAMPLES[site]) for site in present]
        released_plain = plain.aggregate(GLOBAL, updates)
        summed = _secure_sum(config, states, drop)
        assert summed.sites == tuple(present)
        released_secure = secure.aggregate(GLOBAL, [summed])
        # The same noise (same seed) at the same scale; the releases differ only by the
        # sites' slack (clip to C - η) and the rounding (at most η), both over m.
        gap = float(np.linalg.norm(_flat(released_secure) - _flat(released_plain)))
        assert gap <= 2 * slack * len(present) / SITES + 1e-6
        assert plain.last_round_privacy() == secure.last_round_privacy()
    plain_entries = read_server_ledger(tmp_path / "plain").entries
    secure_entries = read_server_ledger(tmp_path / "secure").entries
    assert len(secure_entries) == 2
    for a, b in zip(plain_entries, secure_entries, strict=True):
        assert dataclasses.replace(a, time="") == dataclasses.replace(b, time="")
        assert b.updates == len(present) and b.sampled == SITES
        assert math.isfinite(b.epsilon_prv) and b.epsilon_prv == a.epsilon_prv
        assert b.epsilon_rdp == a.epsilon_rdp


def test_the_sites_clip_from_the_adapter_the_wire_delivered_and_only_their_steps_are_released():
    # bfloat16 on the wire: the sites start from a rounded global adapter; the release is the
    # coordinator's global plus the clipped steps over m, not plus the wire's rounding.
    config = _config(wire_dtype="bfloat16", central_noise_multiplier=0.0)
    global_state = {n: t + 1e-3 for n, t in GLOBAL.items()}
    received = {n: t.to(torch.bfloat16).to(torch.float32) for n, t in global_state.items()}
    assert any(not torch.equal(received[n], global_state[n]) for n in GLOBAL)
    states = _states(received)
    strategy = CentralDP(FedAvg(), mode="fixed", noise_multiplier=0.0, clip_norm=CLIP, sites=SITES)
    drop = {"mask": {"site-2"}}
    summed = _secure_sum(config, states, drop, global_state)
    released = strategy.aggregate(global_state, [summed])

    slack = quantisation_slack(_values(), SITES, Quantiser(config.secure_aggregation_range))
    steps = sum(_clipped(states[s], CLIP - slack, received) for s in ("site-0", "site-1"))
    expected = _flat(global_state) + steps / SITES
    bound = Quantiser(config.secure_aggregation_range).error_bound(SITES, 1.0)
    cast = 1.2e-7 * float(np.abs(expected).max())  # the release is cast to float32
    assert float(np.abs(_flat(released) - expected).max()) <= bound + cast


def test_a_sites_contribution_as_decoded_stays_within_the_clip_norm():
    # A coarse grid (wide range, many sites), and a clip norm that puts each value of a
    # clipped constant update at 2.6 grid steps: rounding would carry it to 3 steps, past C.
    values, sites, value_range = 4096, 50, 2.0**15
    quantiser = Quantiser(value_range)
    step = sites / quantiser.scale
    clip = math.sqrt(values) * 2.6 * step
    start = {"w": torch.zeros(values)}
    huge = {"w": torch.full((values,), 3.0)}
    slack = quantisation_slack(values, sites, quantiser)
    assert slack == pytest.approx(math.sqrt(values) * 0.5 * step, rel=1e-5)

    def decoded(state: AdapterState) -> torch.Tensor:
        encoded = quantiser.encode(quantiser.flatten(state), 1 / sites)
        return quantiser.decode(encoded, layout_of(start), 1, 1 / sites)["w"].to(torch.float64)

    clipped = clip_for_secure_sum(start, huge, clip, sites=sites, range_=value_range, site="a")
    assert clipped["w"].dtype == torch.float64
    assert float(clipped["w"].norm()) == pytest.approx(clip - slack, rel=1e-12)
    assert float(decoded(clipped).norm()) <= clip
    assert float((decoded(clipped) - clipped["w"]).norm()) <= slack
    # Clipped to C itself, the decoded contribution would exceed C: the slack is needed.
    _, delta, was_clipped = clip_delta(start, huge, clip, site="a")
    assert was_clipped
    assert float(decoded({"w": torch.from_numpy(delta[0])}).norm()) > clip


def test_a_clip_norm_the_rounding_would_swamp_is_refused_with_what_to_change():
    start = {"w": torch.zeros(4096)}
    with pytest.raises(
        ConfigError, match=r"not above the secure sum's rounding.*raise central-clip"
    ):
        clip_for_secure_sum(start, start, 1e-9, sites=SITES, range_=8.0, site="a")
    with pytest.raises(ConfigError, match="needs sites >= 2, got 0"):
        clip_for_secure_sum(start, start, CLIP, sites=0, range_=8.0, site="a")
    for clip in (float("inf"), float("nan"), -1.0):  # a coordinator's config is checked too
        with pytest.raises(ConfigError, match="central-clip-norm must be a positive number"):
            clip_for_secure_sum(start, start, clip, sites=SITES, range_=8.0, site="a")


def _summed(step: float, **changes: object) -> SummedUpdate:
    state = {n: t.to(torch.float64) + step for n, t in GLOBAL.items()}
    update = SummedUpdate("secure-sum", state, 3, ("a", "b", "c"), dict(GLOBAL), CLIP)
    return dataclasses.replace(update, **changes)  # type: ignore[arg-type]


def test_central_dp_refuses_a_sum_that_a_site_did_not_clip_or_clipped_to_another_norm():
    strategy = CentralDP(FedAvg(), mode="fixed", noise_multiplier=0.0, clip_norm=CLIP, sites=3)
    strategy.aggregate(GLOBAL, [_summed(0.1)])  # norm 0.1 * sqrt(10) < C: accepted
    with pytest.raises(AdapterError, match=r"above the clip norm 0\.5: a site did not clip"):
        strategy.aggregate(GLOBAL, [_summed(0.2)])
    with pytest.raises(FedloraError, match=r"the sites clipped to 1, this round needs 0\.5"):
        strategy.aggregate(GLOBAL, [_summed(0.1, clip_norm=1.0)])
    with pytest.raises(FedloraError, match="4 sites, 4 distinct, for 3 sampled"):
        strategy.aggregate(GLOBAL, [_summed(0.1, sites=("a", "b", "c", "d"))])
    with pytest.raises(FedloraError, match="must be the round's only update"):
        strategy.aggregate(GLOBAL, [_summed(0.1, start=None)])
    with pytest.raises(FloatingPointError, match="non-finite"):
        strategy.aggregate(GLOBAL, [_summed(float("nan"))])
    adaptive = CentralDP(FedAvg(), mode="adaptive", noise_multiplier=0.0, clip_norm=CLIP, sites=3)
    with pytest.raises(ConfigError, match="cannot run central-dp=adaptive"):
        adaptive.aggregate(GLOBAL, [_summed(0.1)])


def test_the_config_accepts_fixed_central_dp_with_secure_aggregation_and_refuses_adaptive():
    assert _config().central_dp == "fixed"
    with pytest.raises(ConfigError, match="cannot run central-dp=adaptive") as caught:
        _config(central_dp="adaptive")
    assert "\n" not in str(caught.value)

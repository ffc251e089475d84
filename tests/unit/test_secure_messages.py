"""Secure aggregation on the wire: the train reply's advertisement, stage messages, a site's
session kept between messages."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Context, Message, RecordDict

from fedlora.adapters import pack_adapter
from fedlora.clients.secure_site import handle_secure_stage, secure_train_reply, site_keys
from fedlora.config import RunConfig
from fedlora.errors import ConfigError
from fedlora.protocol import Instruction, make_reply
from fedlora.replies import MAX_ADVERTISEMENT_BYTES, ReplyRejectedError, parse_reply
from fedlora.secagg import ForgedKeyError, Quantiser, SecAggError
from fedlora.secagg.crypto import Identity
from fedlora.secagg.wire import (
    decode_advertisement,
    decode_named,
    encode_listing,
    encode_named,
)
from fedlora.secure_messages import (
    MESSAGE_TYPE,
    attach_advertisement,
    make_stage,
    read_stage,
    read_stage_reply,
)


@pytest.fixture(autouse=True)
def _identity(flower_identity: None) -> None:
    """Every test here builds Messages."""


def _reply(adapter: bytes | None, advertisement: bytes, phase: str = "train") -> Message:
    metrics = {"num-examples": 4.0} if phase == "train" else {"num-examples": 2.0, "loss": 1.0}
    content = attach_advertisement(make_reply("site-a", metrics, adapter), advertisement)
    return Message(content, dst_node_id=1, message_type=phase)


def test_a_train_reply_may_carry_an_advertisement_instead_of_the_adapter() -> None:
    parsed = parse_reply(_reply(None, b"keys"), "train")
    assert parsed.advertisement == b"keys" and parsed.state is None
    assert parsed.received_bytes == 4
    adapter = pack_adapter({"w": torch.zeros(2)})
    for message, phase, reason in (
        (_reply(adapter, b"keys"), "train", "without an adapter carries an advertisement"),
        (_reply(None, b"keys", "evaluate"), "evaluate", "carries an advertisement"),
        (_reply(None, b"k" * (MAX_ADVERTISEMENT_BYTES + 1)), "train", "must be 1-1024 bytes"),
    ):
        with pytest.raises(ReplyRejectedError, match=reason):
            parse_reply(message, phase)  # type: ignore[arg-type]
    with pytest.raises(ReplyRejectedError, match="carries no adapter"):
        parse_reply(Message(make_reply("site-a", {"num-examples": 4.0}), dst_node_id=1,
                            message_type="train"), "train")  # fmt: skip


def _context() -> Context:
    return Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})


def _instruction(server_round: int, threshold: int = 2) -> Instruction:
    config = RunConfig(secure_aggregation=True, secure_aggregation_threshold=threshold, sites=2)
    return Instruction(config, server_round, "fingerprint", b"", "run-7", False)


def _stage(stage: str, server_round: int, payload: bytes) -> Message:
    content = make_stage(stage, server_round, "run-7", payload)
    return Message(content, dst_node_id=7, message_type=MESSAGE_TYPE)


def test_two_sites_run_the_stages_from_their_kept_state_and_refuse_another_round() -> None:
    contexts = {"a": _context(), "b": _context()}
    states = {"a": {"w": torch.full((3,), 0.5)}, "b": {"w": torch.full((3,), -0.25)}}
    ads = {}
    for site, context in contexts.items():
        content = secure_train_reply(
            context, _instruction(4), site, states[site], {"num-examples": 2.0}, None, None
        )
        message = Message(content, dst_node_id=1, message_type="train")
        ads[site] = parse_reply(message, "train").advertisement
        assert decode_advertisement(ads[site]).site == site
    listed = encode_listing(4, [decode_advertisement(ad or b"") for ad in ads.values()])
    with pytest.raises(SecAggError, match="for round 5; this site's session is for round 4"):
        handle_secure_stage(_stage("share", 5, listed), contexts["a"])
    with pytest.raises(SecAggError, match="no secure-aggregation session"):
        handle_secure_stage(_stage("share", 4, listed), _context())
    shares = {
        site: decode_named(read_stage_reply(handle_secure_stage(_stage("share", 4, listed), c))[1])
        for site, c in contexts.items()
    }
    masked = {}
    for site, context in contexts.items():
        incoming = encode_named({s: b[site] for s, b in shares.items() if s != site})
        reply = handle_secure_stage(_stage("mask", 4, incoming), context)
        masked[site] = np.frombuffer(read_stage_reply(reply)[1], dtype="<u4")
    # The kept session no longer holds the plain update, and a second mask is refused.
    with pytest.raises(SecAggError, match="mask requested at stage unmask"):
        handle_secure_stage(_stage("mask", 4, encode_named({})), contexts["a"])
    quantiser = Quantiser(8.0)
    plain = quantiser.encode(quantiser.flatten(states["a"]), 2 / 4)
    assert masked["a"].shape == plain.shape and not np.any(masked["a"] == plain)


def test_a_stage_message_round_trips_and_a_foreign_one_is_refused() -> None:
    message = _stage("unmask", 3, b"\x01\x02")
    assert read_stage(message) == ("unmask", 3, "run-7", b"\x01\x02")
    with pytest.raises(SecAggError, match="not a secure-aggregation stage"):
        read_stage(Message(RecordDict(), dst_node_id=7, message_type=MESSAGE_TYPE))
    with pytest.raises(SecAggError, match="stage 'open'"):
        read_stage(_stage("open", 3, b""))


def _node(tmp_path: Path, site: str, identity: Identity, roster: dict[str, str]) -> Context:
    key, listed = tmp_path / f"{site}.pem", tmp_path / f"{site}-roster.json"
    key.write_bytes(identity.to_pem())
    listed.write_text(json.dumps(roster))
    config = {"secagg-identity-key": str(key), "secagg-roster": str(listed)}
    return Context(run_id=1, node_id=7, node_config=config, state=RecordDict(), run_config={})


def test_a_site_with_a_roster_signs_with_its_key_and_refuses_peers_the_roster_lacks(
    tmp_path: Path,
) -> None:
    ids = {"a": Identity(), "b": Identity(), "c": Identity()}
    # a's roster knows a and b; c is not on it (an impostor the coordinator inserted).
    roster = {name: ids[name].public.hex() for name in ("a", "b")}
    contexts = {name: _node(tmp_path, name, ids[name], roster | {"c": ids["c"].public.hex()})
                for name in ("b", "c")}  # fmt: skip
    contexts["a"] = _node(tmp_path, "a", ids["a"], roster)
    ads = []
    for site, context in contexts.items():
        content = secure_train_reply(
            context, _instruction(4), site, {"w": torch.zeros(2)}, {"num-examples": 2.0}, None, None
        )
        advertisement = parse_reply(Message(content, dst_node_id=1, message_type="train"), "train")
        ads.append(decode_advertisement(advertisement.advertisement or b""))
    assert {ad.site: ad.signing_key for ad in ads} == {n: i.public for n, i in ids.items()}
    with pytest.raises(ForgedKeyError, match=r"'c'.*not on the roster"):
        handle_secure_stage(_stage("share", 4, encode_listing(6, ads)), contexts["a"])
    # b's roster vouches for all three: it shares.
    handle_secure_stage(_stage("share", 4, encode_listing(6, ads)), contexts["b"])


def test_a_site_refuses_a_half_configured_or_foreign_roster(tmp_path: Path) -> None:
    mine, other = Identity(), Identity()
    half = _node(tmp_path, "a", mine, {"a": mine.public.hex()})
    del half.node_config["secagg-roster"]
    with pytest.raises(ConfigError, match="give both"):
        site_keys(half, "a")
    with pytest.raises(SecAggError, match="does not list site a with its key"):
        site_keys(_node(tmp_path, "a", mine, {"a": other.public.hex()}), "a")
    with pytest.raises(SecAggError, match="not 64 hex digits"):
        site_keys(_node(tmp_path, "a", mine, {"a": "zz"}), "a")
    assert site_keys(_node(tmp_path, "a", mine, {"a": mine.public.hex()}), "a")[1].authenticated

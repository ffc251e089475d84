"""A site's side of secure aggregation: it sends its update only masked, and only the sum opens.

After training, a site with ``secure-aggregation`` on quantises its update weighted by its
example count (:class:`fedlora.secagg.Quantiser`, which refuses a non-finite value or one beyond
``secure-aggregation-range``: each site checks its own update), starts a
:class:`~fedlora.secagg.SiteSession` and replies with its signed key advertisement instead of
its adapter. The session (private keys, seed, shares, the quantised update) stays in the node's
``Context.state`` between the round's messages, never on the wire; each ``train.secagg``
message moves it one stage (:mod:`fedlora.secure_messages`).

A site whose node config names ``secagg-identity-key`` (its Ed25519 private key, PEM) and
``secagg-roster`` signs with that key and refuses any advertisement that the roster does not
vouch for. In a deployment the node config also names ``secagg-ca`` (the federation's
``ca.pem``, what ``site.toml``'s ``root-certificates`` gives): the roster is then the one
``fedlora pki`` issues, and is trusted only once that CA's signature on it verifies
(:func:`fedlora.pki.secagg_roster.verify_roster`). Without ``secagg-ca`` the roster is plain
JSON (every site's name -> its raw public key in hex), as the operator wrote it. Without the
keys (simulation) each site signs with a key made for the round and checks signatures against
the advertised keys (:class:`~fedlora.secagg.KeyRoster` ``None``; docs/security.md).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flwr.app import Context, Message, RecordDict

from fedlora.adapters import (
    AdapterState,
    packed_array_record,
    packed_from_array_record,
    unpack_adapter,
)
from fedlora.errors import ConfigError, PkiError
from fedlora.pki.secagg_roster import verify_roster
from fedlora.privacy.update_clipping import clip_for_secure_sum
from fedlora.protocol import Instruction, make_reply
from fedlora.secagg import KeyRoster, Quantiser, SecAggError, SiteSession
from fedlora.secagg.crypto import Identity
from fedlora.secagg.wire import (
    decode_listing,
    decode_named,
    decode_request,
    encode_advertisement,
    encode_named,
    encode_unmask_reply,
    encode_vector,
)
from fedlora.secure_messages import (
    attach_advertisement,
    make_stage_reply,
    read_stage,
)

logger = logging.getLogger(__name__)

STATE_KEY = "fedlora-secagg-session"
IDENTITY_KEY = "secagg-identity-key"
ROSTER = "secagg-roster"
ROSTER_CA = "secagg-ca"


def secure_train_reply(
    context: Context,
    instruction: Instruction,
    site: str,
    state: AdapterState,
    metrics: Mapping[str, float],
    privacy: Mapping[str, Any] | None,
    evaluation: Mapping[str, float] | None,
) -> RecordDict:
    """The train reply of a secure round: metrics and the key advertisement, no adapter.

    With central DP the site first clips its update from the adapter it received
    (:func:`fedlora.privacy.update_clipping.clip_for_secure_sum`) and weighs 1 in the sum.

    Raises
    ------
    SecAggError
        When the update cannot be encoded (non-finite, beyond the range).
    ConfigError
        When central DP's clip norm is not above the secure sum's rounding.
    """
    config = instruction.config
    identity, roster = site_keys(context, site)
    quantiser = Quantiser(config.secure_aggregation_range)
    weight = int(metrics["num-examples"])
    if config.central_dp != "off":
        # Central DP: clipped here, before masking; every site weighs the same.
        state = clip_for_secure_sum(
            unpack_adapter(instruction.adapter),
            state,
            config.central_clip_norm,
            sites=config.sites,
            range_=config.secure_aggregation_range,
            site=site,
        )
        weight = 1
    session = SiteSession(
        site,
        instruction.run_id,
        instruction.server_round,
        config.secure_aggregation_threshold,
        quantiser.flatten(state),
        weight,
        quantiser,
        identity,
        roster,
    )
    advertisement = encode_advertisement(session.advertise())
    context.state[STATE_KEY] = packed_array_record(session.export())
    return attach_advertisement(make_reply(site, metrics, None, privacy, evaluation), advertisement)


def site_keys(context: Context, site: str) -> tuple[Identity, KeyRoster]:
    """The site's identity and the roster it checks its peers against (module docstring).

    Raises
    ------
    ConfigError
        When the node config names only one of the two files (or a CA without them), or one
        cannot be read.
    SecAggError
        When a file is malformed, the CA did not sign the roster (altered, forged, another
        federation's), or the roster does not list this site with its own key.
    """
    node = context.node_config
    key_path, roster_path = node.get(IDENTITY_KEY), node.get(ROSTER)
    ca_path = node.get(ROSTER_CA)
    if key_path is None and roster_path is None and ca_path is None:
        return Identity(), KeyRoster(None)
    if key_path is None or roster_path is None:
        raise ConfigError(f"node config: give both {IDENTITY_KEY} and {ROSTER}, or neither")
    try:
        pem = Path(str(key_path)).read_bytes()
        if ca_path is None:
            roster = KeyRoster.from_json(Path(str(roster_path)).read_text(encoding="utf-8"))
        else:
            roster = KeyRoster(verify_roster(str(roster_path), str(ca_path)))
    except OSError as error:
        raise ConfigError(f"node config: cannot read a secure-aggregation file: {error}") from None
    except PkiError as error:
        raise SecAggError(str(error)) from None
    try:
        identity = Identity.from_pem(pem)
    except SecAggError as error:
        raise SecAggError(f"{IDENTITY_KEY} {key_path}: {error}") from None
    assert roster.keys is not None
    if roster.keys.get(site) != identity.public:
        raise SecAggError(
            f"the secure-aggregation roster {roster_path} does not list site {site} with its key"
        )
    logger.info(
        "site %s: secure-aggregation keys checked against a roster of %d sites%s",
        site,
        len(roster.keys),
        " signed by the federation CA" if ca_path is not None else " (unsigned)",
    )
    return identity, roster


def handle_secure_stage(message: Message, context: Context) -> Message:
    """Move this round's session one stage and reply with what that stage sends.

    Raises
    ------
    SecAggError
        When there is no session for this round, the message is malformed, or the session
        refuses (a forged key, a share that fails authentication, an unmasking request that
        would reveal an individual update).
    """
    stage, server_round, run_id, payload = read_stage(message)
    kept = context.state.array_records.get(STATE_KEY)
    if kept is None:
        raise SecAggError(f"no secure-aggregation session for round {server_round} here")
    session = SiteSession.restore(packed_from_array_record(kept))
    if (session.run_id, session.server_round) != (run_id, server_round):
        raise SecAggError(
            f"the {stage} message is for round {server_round}; this site's session is for "
            f"round {session.server_round}"
        )
    if stage == "share":
        total_examples, ads = decode_listing(payload)
        answer = encode_named(session.share(ads, total_examples))
    elif stage == "mask":
        answer = encode_vector(session.mask(decode_named(payload)))
    else:
        answer = encode_unmask_reply(session.unmask(decode_request(payload)))
    context.state[STATE_KEY] = packed_array_record(session.export())
    logger.debug("site %s: secure-aggregation stage %s done", session.site, stage)
    return Message(make_stage_reply(session.site, answer), reply_to=message)

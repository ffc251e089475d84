"""A site's side of one secure-aggregation round, as a state machine.

``advertise`` -> ``share`` -> ``mask`` -> ``unmask``, each callable once and in this order. The
site keeps its secrets (two X25519 private keys, the self-mask seed) and the shares it holds of
its peers' secrets; it sends only public keys, encrypted shares, its masked input and, when
asked, the shares the protocol allows. Its core rule (Bell et al.): it never reveals both its
share of a peer's mask key (which unmasks the pairwise masks of a peer that dropped) and its
share of the same peer's self-mask seed (which removes a survivor's self mask): with both, the
coordinator could unmask that peer's input alone. A request that would do so is refused.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

from fedlora.flower_internals.shamir import split_secret
from fedlora.secagg.crypto import (
    Identity,
    KeyRoster,
    agree,
    apply_masks,
    derive,
    new_x25519,
    public_x25519,
    seal,
    unseal,
)
from fedlora.secagg.quantise import Quantiser
from fedlora.secagg.types import (
    Advertisement,
    RoundAbandonedError,
    SecAggError,
    UnmaskRefusedError,
    UnmaskReply,
    UnmaskRequest,
    threshold_for,
)
from fedlora.secagg.wire import (
    decode_advertisement,
    decode_named,
    encode_advertisement,
    encode_named,
    pack_fields,
    unpack_fields,
)

_STAGES = ("advertise", "share", "mask", "unmask", "done")
_UPDATE_TAGS = {b"4": "<f4", b"1": "<f8"}
"""An update's dtypes (float32 or float64, as :meth:`Quantiser.flatten` returns) by their tag
in an export."""


def pair_key(secret: bytes, run_id: str, server_round: int, one: str, other: str) -> bytes:
    """The mask key of a pair for one round, from their agreed secret (order-independent)."""
    low, high = sorted((one, other))
    return derive(secret, "pair-mask", run_id, server_round, low, high)


def self_key(seed: bytes, run_id: str, server_round: int, site: str) -> bytes:
    """A site's self-mask key for one round, from its seed."""
    return derive(seed, "self-mask", run_id, server_round, site)


def share_context(run_id: str, server_round: int, sender: str, recipient: str) -> bytes:
    """What an encrypted share is bound to (its associated data)."""
    return pack_fields(
        b"share", run_id.encode(), str(server_round).encode(), sender.encode(), recipient.encode()
    )


class SiteSession:
    """One site's state in one round (see the module docstring).

    Parameters
    ----------
    site, run_id, server_round
        Who speaks, in which run and round: all signed and bound into every key.
    threshold
        The fewest sites that must remain for anything to be revealed (t); 0: a majority of
        the sites that advertise keys (:func:`~fedlora.secagg.types.threshold_for`).
    update, num_examples, quantiser
        The site's flattened, checked update (:meth:`fedlora.secagg.Quantiser.flatten`), its
        example count, and the encoding it is sent in once the round's total is known.
    identity, roster
        The site's signing key; the keys the peers' advertisements are checked against.
    """

    def __init__(
        self,
        site: str,
        run_id: str,
        server_round: int,
        threshold: int,
        update: np.ndarray,
        num_examples: int,
        quantiser: Quantiser,
        identity: Identity | None,
        roster: KeyRoster,
    ) -> None:
        threshold_for(threshold, 0)  # refuses 1 and negatives now
        self.site, self.run_id, self.server_round = site, run_id, server_round
        self.configured_threshold = threshold
        self.threshold = threshold
        """t: as configured, or (0) a majority of the sites that advertised, fixed at ``share``."""
        self.roster = roster
        self._identity = identity
        if num_examples < 0:
            raise SecAggError(f"site {site}: a negative example count {num_examples}")
        if update.dtype not in (np.float32, np.float64):
            update = update.astype(np.float64)
        self._update: np.ndarray | None = update.reshape(-1)
        self.num_examples = num_examples
        self.total_examples = 0
        """The round's example total the coordinator announced at ``share`` (fixed then)."""
        self.quantiser = quantiser
        self._encryption_private, self._encryption_public = new_x25519()
        self._mask_private, self._mask_public = new_x25519()
        self._seed = os.urandom(32)
        self.stage = "advertise"
        self.peers: dict[str, Advertisement] = {}
        self.sharers: tuple[str, ...] = ()
        """U2 as this site saw it: the peers whose shares it received (itself included)."""
        self._mask_key_shares: dict[str, bytes] = {}
        self._seed_shares: dict[str, bytes] = {}
        self.revealed_keys: set[str] = set()
        self.revealed_seeds: set[str] = set()

    def _advance(self, stage: str) -> None:
        if self.stage != stage:
            raise SecAggError(f"site {self.site}: {stage} requested at stage {self.stage}")
        self.stage = _STAGES[_STAGES.index(stage) + 1]

    def advertise(self) -> Advertisement:
        """Stage 1: this round's public keys, signed."""
        self._advance("advertise")
        if self._identity is None:
            raise SecAggError(f"site {self.site}: a restored session cannot advertise")
        unsigned = Advertisement(
            self.site,
            self.run_id,
            self.server_round,
            self._encryption_public,
            self._mask_public,
            self._identity.public,
            b"",
        )
        signature = self._identity.sign(unsigned.signed_bytes())
        return Advertisement(**{**unsigned.__dict__, "signature": signature})

    def share(
        self, advertisements: Sequence[Advertisement], total_examples: int
    ) -> dict[str, bytes]:
        """Stage 2: each peer's encrypted shares of this site's mask key and self-mask seed.

        ``total_examples``: the advertising sites' example total, which this site's weight is
        taken against (refused when below this site's own count).

        Raises
        ------
        ForgedKeyError
            Naming a peer whose advertisement fails the roster or its signature.
        RoundAbandonedError
            When fewer than the threshold advertised (or this site is not among them).
        """
        self._advance("share")
        if not max(1, self.num_examples) <= total_examples:
            raise SecAggError(
                f"site {self.site}: the round's example total {total_examples} is below its own "
                f"{self.num_examples}"
            )
        self.total_examples = total_examples
        peers: dict[str, Advertisement] = {}
        for advertisement in advertisements:
            self.roster.verify(advertisement, self.run_id, self.server_round)
            if advertisement.site in peers:
                raise SecAggError(f"site {advertisement.site!r} advertised twice")
            peers[advertisement.site] = advertisement
        own = peers.get(self.site)
        if own is None or own.mask_key != self._mask_public:
            raise SecAggError(f"site {self.site}: the advertisements omit or alter its own keys")
        self.threshold = threshold_for(self.configured_threshold, len(peers))
        if len(peers) < self.threshold:
            raise RoundAbandonedError(
                f"{len(peers)} site(s) advertised keys, fewer than the threshold {self.threshold}"
            )
        self.peers = dict(sorted(peers.items()))
        names = list(self.peers)
        key_shares = split_secret(self._mask_private, self.threshold, len(names))
        seed_shares = split_secret(self._seed, self.threshold, len(names))
        sealed: dict[str, bytes] = {}
        for name, key_share, seed_share in zip(names, key_shares, seed_shares, strict=True):
            if name == self.site:
                self._mask_key_shares[name], self._seed_shares[name] = key_share, seed_share
                continue
            key = self._share_key(name)
            plaintext = pack_fields(self.site.encode(), name.encode(), key_share, seed_share)
            sealed[name] = seal(
                key, plaintext, share_context(self.run_id, self.server_round, self.site, name)
            )
        return sealed

    def _share_key(self, peer: str) -> bytes:
        secret = agree(self._encryption_private, self.peers[peer].encryption_key)
        low, high = sorted((self.site, peer))
        return derive(secret, "share-encryption", self.run_id, self.server_round, low, high)

    def mask(self, sealed: Mapping[str, bytes]) -> np.ndarray:
        """Stage 3: the masked input, given the shares the peers sent to this site.

        The peers who sent shares (and this site) are U2: the input is masked pairwise with
        each of them and with this site's self mask.

        Raises
        ------
        SecAggError
            For a share from an unknown peer or one that fails authentication.
        RoundAbandonedError
            When fewer than the threshold sent shares.
        """
        self._advance("mask")
        for sender, ciphertext in sealed.items():
            if sender not in self.peers or sender == self.site:
                raise SecAggError(f"site {self.site}: a share from unknown site {sender!r}")
            context = share_context(self.run_id, self.server_round, sender, self.site)
            fields = unpack_fields(unseal(self._share_key(sender), ciphertext, context), 4)
            if fields[0] != sender.encode() or fields[1] != self.site.encode():
                raise SecAggError(f"site {self.site}: a share from {sender!r} is misaddressed")
            self._mask_key_shares[sender], self._seed_shares[sender] = fields[2], fields[3]
        self.sharers = tuple(sorted({*sealed, self.site}))
        if len(self.sharers) < self.threshold:
            raise RoundAbandonedError(
                f"{len(self.sharers)} site(s) shared keys, fewer than the threshold "
                f"{self.threshold}"
            )
        assert self._update is not None
        masked = self.quantiser.encode(self._update, self.num_examples / self.total_examples)
        self._update = None  # nothing unmasked stays behind
        added = [self_key(self._seed, self.run_id, self.server_round, self.site)]
        subtracted: list[bytes] = []
        for peer in self.sharers:
            if peer == self.site:
                continue
            secret = agree(self._mask_private, self.peers[peer].mask_key)
            key = pair_key(secret, self.run_id, self.server_round, self.site, peer)
            # The pair's masks cancel: the site whose name sorts first adds, the other subtracts.
            (added if self.site < peer else subtracted).append(key)
        apply_masks(masked, add=added, subtract=subtracted)
        return masked

    def unmask(self, request: UnmaskRequest) -> UnmaskReply:
        """Stage 4: shares of the dropped peers' mask keys and the survivors' seeds.

        Raises
        ------
        UnmaskRefusedError
            When a peer is named both dropped and surviving (now or against what this site
            revealed before), a name is not one of U2, this site is not a survivor, or fewer
            than the threshold survive: answering would unmask an individual input.
        """
        if self.stage not in ("unmask", "done"):
            raise SecAggError(f"site {self.site}: unmask requested at stage {self.stage}")
        survivors, dropped = set(request.survivors), set(request.dropped)
        both = (
            (survivors & dropped)
            | (survivors & self.revealed_keys)
            | (dropped & self.revealed_seeds)
        )
        if both:
            raise UnmaskRefusedError(
                f"site {self.site} refuses to reveal both the self-mask share and the mask-key "
                f"share of {sorted(both)}: that would unmask their input"
            )
        unknown = (survivors | dropped) - set(self.sharers)
        if request.server_round != self.server_round or unknown:
            raise UnmaskRefusedError(
                f"site {self.site}: the unmask request names sites outside this round's "
                f"sharers: {sorted(unknown)}"
            )
        if self.site not in survivors or len(survivors) < self.threshold:
            raise UnmaskRefusedError(
                f"site {self.site}: {len(survivors)} survivor(s) named, fewer than the threshold "
                f"{self.threshold} (or not this site); nothing revealed"
            )
        self.stage = "done"
        self.revealed_keys |= dropped
        self.revealed_seeds |= survivors
        return UnmaskReply(
            site=self.site,
            mask_key_shares={peer: self._mask_key_shares[peer] for peer in sorted(dropped)},
            self_seed_shares={peer: self._seed_shares[peer] for peer in sorted(survivors)},
        )

    def export(self) -> bytes:
        """The whole session as bytes, to keep between messages (a node's private state).

        Holds the private keys, the seed and the shares: it must stay on the site.
        """
        roster = b"" if self.roster.keys is None else b"1" + encode_named(self.roster.keys)
        return pack_fields(
            *(text.encode() for text in (self.site, self.run_id, str(self.server_round))),
            *(str(n).encode() for n in (self.configured_threshold, self.threshold)),
            self.stage.encode(),
            self._encryption_private,
            self._mask_private,
            self._seed,
            b"" if self._update is None else self._export_update(self._update),
            *(str(n).encode() for n in (self.num_examples, self.total_examples)),
            *(repr(v).encode() for v in (self.quantiser.clip, self.quantiser.bits)),
            encode_named({name: encode_advertisement(ad) for name, ad in self.peers.items()}),
            encode_named({name: b"" for name in self.sharers}),
            encode_named(self._mask_key_shares),
            encode_named(self._seed_shares),
            encode_named({name: b"" for name in self.revealed_keys}),
            encode_named({name: b"" for name in self.revealed_seeds}),
            roster,
        )

    @staticmethod
    def _export_update(update: np.ndarray) -> bytes:
        tag = b"4" if update.dtype == np.float32 else b"1"
        return tag + update.astype(_UPDATE_TAGS[tag], copy=False).tobytes()

    @classmethod
    def restore(cls, data: bytes) -> SiteSession:
        """A session from :meth:`export`'s bytes (it can no longer advertise).

        Raises
        ------
        SecAggError
            When the bytes are not an exported session.
        """
        fields = unpack_fields(data, 21)
        try:
            texts = [field.decode() for field in fields[:6]]
            server_round, configured, threshold = (int(text) for text in texts[2:5])
            num_examples, total_examples = int(fields[10].decode()), int(fields[11].decode())
            quantiser = Quantiser(float(fields[12].decode()), int(fields[13].decode()))
        except (UnicodeDecodeError, ValueError):
            raise SecAggError("the kept secure-aggregation session is unreadable") from None
        if texts[5] not in _STAGES:
            raise SecAggError(f"the kept secure-aggregation session has stage {texts[5]!r}")
        roster = KeyRoster(decode_named(fields[20][1:]) if fields[20] else None)
        tag, kept = fields[9][:1], fields[9][1:]
        stored = _UPDATE_TAGS.get(tag) if tag else _UPDATE_TAGS[b"1"]
        if stored is None or len(kept) % int(stored[-1]):
            raise SecAggError("the kept secure-aggregation session has an unreadable update")
        update = np.frombuffer(kept, dtype=stored).astype(stored[1:], copy=False)
        session = cls(
            texts[0], texts[1], server_round, configured, update, num_examples, quantiser, None,
            roster,
        )  # fmt: skip
        session.threshold, session.stage = threshold, texts[5]
        session.total_examples = total_examples
        session._encryption_private, session._mask_private, session._seed = fields[6:9]
        session._update = update if fields[9] else None
        session.peers = {
            name: decode_advertisement(ad) for name, ad in decode_named(fields[14]).items()
        }
        session._encryption_public = public_x25519(session._encryption_private)
        session._mask_public = public_x25519(session._mask_private)
        session.sharers = tuple(decode_named(fields[15]))
        session._mask_key_shares = decode_named(fields[16])
        session._seed_shares = decode_named(fields[17])
        session.revealed_keys = set(decode_named(fields[18]))
        session.revealed_seeds = set(decode_named(fields[19]))
        return session

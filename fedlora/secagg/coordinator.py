"""The coordinator's side of one secure-aggregation round, as a state machine.

It relays what the sites send (advertisements to all, each encrypted share to its recipient),
adds up the masked inputs, asks the survivors for the shares that remove the masks, and
returns only the sum. At every stage at least ``threshold`` sites must remain; otherwise the
round is abandoned (:class:`~fedlora.secagg.types.RoundAbandonedError`): no unmasking request
goes out and nothing is aggregated. Mask keys it reconstructs are checked against the keys the
site advertised, so a tampered share is caught rather than silently corrupting the sum.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from fedlora.flower_internals.shamir import combine_secret
from fedlora.secagg.crypto import KeyRoster, agree, apply_masks, public_x25519
from fedlora.secagg.site import pair_key, self_key
from fedlora.secagg.types import (
    Advertisement,
    ForgedKeyError,
    RoundAbandonedError,
    SecAggError,
    UnmaskReply,
    UnmaskRequest,
    threshold_for,
)

logger = logging.getLogger(__name__)


class CoordinatorSession:
    """One round's secure aggregation at the coordinator (see the module docstring).

    Parameters
    ----------
    run_id, server_round
        The run and round every advertisement must be signed for.
    threshold
        The fewest sites that must remain (t >= 2); 0: a majority of those that advertise.
    length
        The number of values of every input (uint32, the ring Z/2^32).
    roster
        The keys advertisements are checked against (the sites check them too).
    """

    def __init__(
        self, run_id: str, server_round: int, threshold: int, length: int, roster: KeyRoster
    ) -> None:
        threshold_for(threshold, 0)  # refuses 1 and negatives now
        self.run_id, self.server_round = run_id, server_round
        self.configured_threshold = threshold
        self.threshold, self.length, self.roster = threshold, length, roster
        self.advertised: dict[str, Advertisement] = {}
        self.sharers: tuple[str, ...] = ()
        self.masked: tuple[str, ...] = ()
        self.answered: tuple[str, ...] = ()
        self.examples: dict[str, int] = {}
        self.total_examples = 0
        self.refused: dict[str, str] = {}
        """Sites dropped for a protocol fault (forged key, malformed message), with why."""
        self._sum: np.ndarray | None = None

    def _require(self, count: int, what: str) -> None:
        if count < self.threshold:
            raise RoundAbandonedError(
                f"round {self.server_round}: {count} site(s) {what}, fewer than the "
                f"secure-aggregation threshold {self.threshold}; round abandoned, nothing "
                "unmasked"
            )

    def receive_advertisements(
        self,
        advertisements: Mapping[str, Advertisement],
        examples: Mapping[str, int],
        *,
        total: int | None = None,
    ) -> list[Advertisement]:
        """U1: the advertisements that verify, to send to every one of those sites.

        ``examples``: each site's example count (from its train reply); their total over U1,
        :attr:`total_examples`, goes out with the advertisements, and each site's weight in
        the sum is its count over that total. ``total`` fixes that denominator instead (central
        DP: every site weighs ``1 / sites`` whoever takes part); it may not be below the sum.

        ``advertisements``: by the site the exchange bound the reply to; one that speaks for
        another site, or fails the roster or its signature, is refused and named in
        :attr:`refused`.
        """
        for site, advertisement in sorted(advertisements.items()):
            try:
                if advertisement.site != site:
                    raise ForgedKeyError(site, f"it speaks for site {advertisement.site!r}")
                self.roster.verify(advertisement, self.run_id, self.server_round)
            except ForgedKeyError as error:
                logger.warning("%s", error)
                self.refused[site] = str(error)
                continue
            self.advertised[site] = advertisement
        self.threshold = threshold_for(self.configured_threshold, len(self.advertised))
        self.examples = {site: int(examples.get(site, 0)) for site in self.advertised}
        if any(count < 0 for count in self.examples.values()):
            raise SecAggError("an example count below 0")
        counted = sum(self.examples.values())
        if total is not None and total < counted:
            raise SecAggError(f"a fixed example total {total} below the sites' {counted}")
        self.total_examples = max(1, counted if total is None else total)
        self._require(len(self.advertised), "advertised valid keys")
        return list(self.advertised.values())

    def route_shares(
        self, bundles: Mapping[str, Mapping[str, bytes]]
    ) -> dict[str, dict[str, bytes]]:
        """U2: each sharer's incoming encrypted shares, by recipient then sender.

        A bundle must address every other advertised site exactly (a site that shares with
        only some peers could not be recovered); otherwise its sender is refused.
        """
        sharers = []
        for site, bundle in sorted(bundles.items()):
            expected = set(self.advertised) - {site}
            if site not in self.advertised or set(bundle) != expected:
                self.refused[site] = "its shares do not address exactly the advertised peers"
                continue
            sharers.append(site)
        self.sharers = tuple(sharers)
        self._require(len(self.sharers), "shared their keys")
        return {
            recipient: {
                sender: bundles[sender][recipient] for sender in self.sharers if sender != recipient
            }
            for recipient in self.sharers
        }

    def receive_masked(self, inputs: Mapping[str, np.ndarray]) -> UnmaskRequest:
        """U3: add up the masked inputs; the request for the shares that unmask the sum."""
        total = np.zeros(self.length, dtype=np.uint32)
        masked = []
        for site, vector in sorted(inputs.items()):
            if site not in self.sharers or vector.shape != (self.length,):
                self.refused[site] = "a masked input from a non-sharer or of the wrong length"
                continue
            np.add(total, vector.astype(np.uint32, copy=False), out=total)
            masked.append(site)
        self.masked = tuple(masked)
        self._require(len(self.masked), "sent masked inputs")
        self._sum = total
        dropped = tuple(site for site in self.sharers if site not in self.masked)
        return UnmaskRequest(self.server_round, survivors=self.masked, dropped=dropped)

    def unmask(self, replies: Mapping[str, UnmaskReply]) -> np.ndarray:
        """U4: the unmasked sum of the U3 inputs (uint32, modulo 2^32).

        Raises
        ------
        RoundAbandonedError
            When fewer than the threshold answered.
        SecAggError
            When the shares do not reconstruct a secret, or a reconstructed mask key is not
            the one its site advertised (a tampered share).
        """
        if self._sum is None:
            raise SecAggError("unmask before the masked inputs arrived")
        answers = {site: reply for site, reply in sorted(replies.items()) if site in self.masked}
        self.answered = tuple(answers)
        self._require(len(self.answered), "answered the unmasking request")
        added: list[bytes] = []
        subtracted: list[bytes] = []
        for survivor in self.masked:
            seed = self._combine(answers, survivor, "self_seed_shares")
            subtracted.append(self_key(seed, self.run_id, self.server_round, survivor))
        for dropped in (site for site in self.sharers if site not in self.masked):
            private = self._combine(answers, dropped, "mask_key_shares")
            if public_x25519(private) != self.advertised[dropped].mask_key:
                raise SecAggError(f"the shares of site {dropped}'s mask key do not match its key")
            for survivor in self.masked:
                secret = agree(private, self.advertised[survivor].mask_key)
                key = pair_key(secret, self.run_id, self.server_round, survivor, dropped)
                # The survivor added the mask when its name sorts first, subtracted it otherwise.
                (subtracted if survivor < dropped else added).append(key)
        total, self._sum = self._sum, None
        apply_masks(total, add=added, subtract=subtracted)
        return total

    def _combine(self, answers: Mapping[str, UnmaskReply], owner: str, field: str) -> bytes:
        shares = [
            getattr(reply, field)[owner]
            for reply in answers.values()
            if owner in getattr(reply, field)
        ]
        if len(shares) < self.threshold:
            raise RoundAbandonedError(
                f"round {self.server_round}: {len(shares)} share(s) of site {owner}'s secret, "
                f"fewer than the threshold {self.threshold}; round abandoned"
            )
        try:
            return combine_secret(shares[: self.threshold])
        except ValueError:
            raise SecAggError(f"the shares of site {owner}'s secret do not combine") from None

    @property
    def weight_sum(self) -> float:
        """The summed weights of the inputs in the sum (U3): what the mean divides by."""
        return sum(self.examples[site] for site in self.masked) / max(1, self.total_examples)

    def counts(self) -> dict[str, Any]:
        """The round's participation: advertised, masked, dropped, recovered, refused.

        ``dropped``: advertised sites that did not answer the unmasking request (all of them
        when the round was abandoned before it); ``recovered``: sharers whose masks were
        removed from their shares because they sent no masked input.
        """
        return {
            "advertised": len(self.advertised),
            "masked": len(self.masked),
            "dropped": len(self.advertised) - len(self.answered),
            "recovered": len(self.sharers) - len(self.masked),
            "refused": dict(self.refused),
        }

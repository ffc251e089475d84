"""When the coordinator asks the SuperLink for the replies of an exchange.

Every ask is an HTTP request that costs the SuperLink and the ServerApp several milliseconds
of CPU (Flower 1.41 on 2 cores: about 13 ms together). Asking every 50 ms through a
one-second training phase is twenty requests taken from the sites' training when all of them
share a machine, as on a loopback deployment, and useless: no site can reply before it has
trained. A train exchange rarely finishes much sooner than the fastest one before it, so the
coordinator stays quiet until :data:`QUIET_SHARE` of that time has passed and then asks
every :data:`FAST_POLL_S` until the last reply is in; once any reply has come, the others
are near and it asks quickly too. Before a first train exchange has been timed, and for
evaluation exchanges (short, and the first one also loads the sites' models), it asks after
:data:`FAST_POLL_S`, then at doubling intervals up to :data:`UNTIMED_POLL_CAP_S`: a reply
waits at most that long to be seen, and a first train exchange of 1.5 s costs about 16 asks
instead of 50 (measured on 2 cores, that round was 0.4-0.6 s slower than the next one with
asks every 0.03 s throughout). A reply that comes during the quiet time waits at most until
its end: a latency, never a lost reply; the round timeout is unchanged.
"""

from __future__ import annotations

import math

QUIET_SHARE = 0.7
"""Share of the fastest previous exchange of its kind the coordinator waits before asking."""
FAST_POLL_S = 0.03
"""Between asks once replies are due."""
UNTIMED_POLL_CAP_S = 0.1
"""Longest interval between asks in an exchange with no earlier one of its kind to go by."""
LONGEST_QUIET_WAIT_S = 0.5
"""A quiet wait is cut into pieces this long: an early reply (an error, a budget decline) is
seen and shown within this time."""


class ReplyPolls:
    """The waits between the coordinator's asks for replies during one exchange.

    Parameters
    ----------
    fastest_previous_s : float or None
        Duration of the fastest earlier exchange of the same kind in this run (from pushing
        the messages to holding the last reply), or ``None`` when there is none.
    """

    def __init__(self, fastest_previous_s: float | None) -> None:
        if fastest_previous_s is not None and not (
            math.isfinite(fastest_previous_s) and fastest_previous_s >= 0
        ):
            raise ValueError(f"fastest previous exchange must be >= 0 s, got {fastest_previous_s}")
        self.quiet_until_s = 0.0 if fastest_previous_s is None else QUIET_SHARE * fastest_previous_s
        self.replies_seen = False
        self._untimed_wait = FAST_POLL_S if fastest_previous_s is None else None

    def replied(self) -> None:
        """A reply came in: the others are due soon, ask quickly from now on."""
        self.replies_seen = True

    def next_wait(self, elapsed_s: float) -> float:
        """Seconds to wait before the next ask, ``elapsed_s`` after the messages were pushed."""
        if self.replies_seen:
            return FAST_POLL_S
        if self._untimed_wait is not None:
            wait = self._untimed_wait
            self._untimed_wait = min(2 * wait, UNTIMED_POLL_CAP_S)
            return wait
        if elapsed_s >= self.quiet_until_s:
            return FAST_POLL_S
        return min(self.quiet_until_s - elapsed_s, LONGEST_QUIET_WAIT_S)

"""What fedlora's processes show by default: their own lines, once, without library chatter.

Two jobs, called from the entry points (the ``fedlora`` command, the ServerApp under ``flwr
run``, a deployment's SuperLink and SuperNode processes):

* :func:`quiet_library_warnings` hides warnings a user cannot act on: deprecation notices of
  the libraries fedlora pins, Opacus's remarks on its own internals and torch's hook notices.
  Warnings that concern the user's input stay.
* :func:`configure_process_logging` gives a long-running Flower process (SuperLink, SuperNode)
  one timestamped handler for every line, each line printed once (Flower's lines used to come
  twice: through its own handler and the root's); by default neither Flower's DEBUG lines
  (``Runtime.AcquireTask`` per poll) nor httpx's INFO line per request are shown.
  ``verbose`` shows them (a log of each request, as the deployment tests read).
"""

from __future__ import annotations

import logging
import warnings

__all__ = ["LIBRARY_WARNINGS", "configure_process_logging", "quiet_library_warnings"]

LIBRARY_WARNINGS: tuple[tuple[str, type[Warning], str], ...] = (
    # Opacus: its RDP order grid remark (the ε stays a valid upper bound), its notice that the
    # secure RNG is off (a site's policy decides that and logs its own line), and the log(0)
    # of its PRV accountant's tails (fedlora's fast PRV shares that maths): exact either way.
    ("Optimal order is the largest alpha", UserWarning, ""),
    ("Secure RNG turned off", UserWarning, ""),
    ("divide by zero encountered in log", RuntimeWarning, r"(opacus|fedlora\.privacy)\."),
    # torch: the notice that Opacus's per-sample hooks fire on outputs (frozen base model)
    ("Full backward hook is firing", UserWarning, ""),
    # deprecation notices of the libraries fedlora pins (torch, transformers, PEFT, Flower, click)
    ("", DeprecationWarning, ""),
    ("", FutureWarning, ""),
)
"""``(message prefix, category, module regex)`` of the warnings hidden unless ``--verbose``."""

_LIBRARY_LOGGERS = ("transformers",)
"""Libraries whose own WARNING lines repeat what fedlora reports itself (dropped examples)."""

_CHATTY_LOGGERS = ("httpx", "httpcore", "uvicorn.access", "alembic")
"""Libraries that log an INFO line per request (a node polls several times a second) or per
plug-in at start-up (alembic)."""


def quiet_library_warnings() -> None:
    """Hide the warnings in :data:`LIBRARY_WARNINGS` in this process (idempotent)."""
    for message, category, module in LIBRARY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    for name in _LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


class _NoEmptyLines(logging.Filter):
    """Drops the empty lines Flower logs before each message it receives or sends."""

    def filter(self, record: logging.LogRecord) -> bool:
        return bool(record.getMessage().strip())


def configure_process_logging(log_format: str, *, verbose: bool = False) -> None:
    """Every line once, through one timestamped root handler; library chatter off by default.

    Flower's logger prints through its own console handler (no timestamps) and also reaches
    the root handler, so each of its lines came twice; its console handler is taken off here
    and the root handler shows Flower's INFO lines (with ``verbose``, its DEBUG lines too). The
    libraries that log a line per request (httpx) are held to warnings unless ``verbose``.

    Parameters
    ----------
    log_format : str
        The root handler's format.
    verbose : bool
        Also Flower's DEBUG lines (``Runtime.AcquireTask`` per poll) and the libraries' INFO
        lines (one per HTTP request).
    """
    import flwr.common.logger  # noqa: F401  (attaches Flower's console handler first)

    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
    for handler in root.handlers:
        handler.setFormatter(logging.Formatter(log_format))
        handler.setLevel(logging.DEBUG if verbose else logging.INFO)
        if not verbose and not any(isinstance(f, _NoEmptyLines) for f in handler.filters):
            handler.addFilter(_NoEmptyLines())
    root.setLevel(logging.INFO)
    flower = logging.getLogger("flwr")
    for handler in list(flower.handlers):
        if type(handler).__name__ == "ConsoleHandler":
            flower.removeHandler(handler)
            # Flower sizes its HTTP servers' (uvicorn's) logging from this handler's level
            handler.setLevel(logging.DEBUG if verbose else logging.INFO)
    for name in _CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else logging.WARNING)
    if not verbose:
        quiet_library_warnings()

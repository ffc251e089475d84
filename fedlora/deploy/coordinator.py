"""The coordinator's side of a deployment: its SuperLink and the sites it admits.

The SuperLink is Flower's, in a fedlora process (:mod:`fedlora.flower_internals.link_superlink`):
Fleet, Control and Runtime APIs on one HTTPS ``--host/--port``, the Control and Runtime APIs only
for connections from the coordinator host itself (:mod:`fedlora.flower_internals.link_operator`),
by default with held pulls, with the PKI's ``ca.pem``, ``server.pem``, ``server.key`` and
``--enable-supernode-auth``. The operator admits each site with ``flwr supernode register``
(:func:`register_site`, which also records it in the roster the ServerApp reads,
:mod:`fedlora.deploy.roster`).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from fedlora.deploy.flwr_cli import run_flwr
from fedlora.deploy.host import check_port, flower_executable
from fedlora.deploy.roster import RosterEntry, default_roster_path, write_roster_entry
from fedlora.errors import ConfigError
from fedlora.flower_internals.link_hold import DEFAULT_HOLD_S, check_hold
from fedlora.pki.layout import PkiLayout, check_site_name, ssh_fingerprint, superlink_tls_flags

__all__ = [
    "DEFAULT_PORT",
    "INSECURE_WARNING",
    "prepare_database",
    "register_argv",
    "register_site",
    "superlink_argv",
]

DEFAULT_PORT = 9093
"""The SuperLink port fedlora uses (Fleet, Control and Runtime APIs share it in Flower; only
the Fleet API answers other hosts, :mod:`fedlora.flower_internals.link_operator`)."""
INSECURE_WARNING = (
    "fedlora: WARNING: --insecure: the SuperLink serves PLAINTEXT HTTP WITHOUT SuperNode "
    "authentication. Adapters, metrics and privacy spend travel unencrypted and ANY process "
    "that reaches the port can join as a site. Use this only on a closed test network."
)


def superlink_argv(
    pki_dir: Path | str,
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    insecure: bool = False,
    database: Path | str | None = None,
    pull_hold: float = DEFAULT_HOLD_S,
    roster: Path | str | None = None,
    verbose: bool = False,
) -> list[str]:
    """The coordinator's SuperLink command line (:mod:`fedlora.flower_internals.link_superlink`).

    Flower's ``flower-superlink`` in a fedlora process: its Control and Runtime APIs answer
    only connections from this host (``127.0.0.1``, ``::1`` or ``host`` itself), its Fleet API
    everyone (:mod:`fedlora.flower_internals.link_operator`).

    Parameters
    ----------
    pki_dir : Path or str
        The PKI directory with ``ca.pem``, ``server.pem`` and ``server.key``.
    host, port : str, int
        Where the SuperLink listens (Fleet, Control and Runtime APIs on one port). Use the
        address in the server certificate's SANs, or ``0.0.0.0`` behind it.
    insecure : bool
        Plaintext and no SuperNode authentication (test networks only); the PKI is not used.
    database : Path or str, optional
        A SQLite file for the SuperLink's state; without it registrations and runs live in
        memory and are lost on restart. Its folder is created (:func:`prepare_database`).
    pull_hold : float
        Seconds the SuperLink holds a pull that finds no message
        (:mod:`fedlora.flower_internals.link_hold`); 0: every pull is answered at once, as Flower
        does.
    roster : Path or str, optional
        The site roster the ServerApp reads (``$FEDLORA_ROSTER``, :mod:`fedlora.deploy.roster`);
        default ``PKI_DIR/roster.json``. An ``insecure`` SuperLink has no site keys and no
        roster.
    verbose : bool
        Log Flower's DEBUG lines and every request (default: INFO, each line once,
        :mod:`fedlora.quiet`).

    Raises
    ------
    ConfigError
        For a bad port or pull hold, a missing TLS file, or a database folder that cannot be
        created or written.
    """
    check_port(port, "--port")
    argv = [sys.executable, "-m", "fedlora.flower_internals.link_superlink"]
    argv += ["--pull-hold", repr(check_hold(pull_hold))]
    if verbose:
        argv.append("--verbose")
    if not insecure:
        target = default_roster_path(pki_dir) if roster is None else roster
        argv += ["--roster", str(Path(target).expanduser().absolute())]
    argv += [
        "--",
        "--host",
        host,
        "--port",
        str(port),
        "--disable-runtime-dependency-installation",
    ]
    if database is not None:
        argv += ["--database", prepare_database(database)]
    if insecure:
        return [*argv, "--insecure"]
    layout = PkiLayout(Path(pki_dir).expanduser().absolute())
    for path, made_by in (
        (layout.ca_cert, "fedlora pki init"),
        (layout.server_cert, "fedlora pki server"),
        (layout.server_key, "fedlora pki server"),
    ):
        if not path.is_file():
            raise ConfigError(f"{path} not found: make it with {made_by} --dir {pki_dir}")
    return [*argv, *superlink_tls_flags(layout)]


def prepare_database(database: Path | str) -> str:
    """The absolute path of the SuperLink's SQLite file, its folder made and checked.

    A missing folder is created, each new level mode 0700 (the file holds the federation's
    registrations and runs); an existing one must be a writable folder. Flower's own names
    for in-memory state (``:flwr-in-memory-state:``, ``:memory:``) pass unchanged.

    Raises
    ------
    ConfigError
        When the path is a folder, or its folder cannot be created or written.
    """
    text = str(database)
    if text.startswith(":") and text.endswith(":"):
        return text
    path = Path(text).expanduser().absolute()
    if path.is_dir():
        raise ConfigError(f"--database {path} is a folder: give the SQLite file inside it")
    folder = path.parent
    missing = [folder, *folder.parents]
    missing = [level for level in missing if not level.exists()]
    try:
        for level in reversed(missing):
            level.mkdir(mode=0o700)
            level.chmod(0o700)  # mkdir's mode is narrowed by the umask, never widened
    except OSError as error:
        raise ConfigError(
            f"--database {path}: cannot create its folder {folder} ({error.strerror}); "
            "create it, or choose another path"
        ) from None
    if not folder.is_dir():
        raise ConfigError(f"--database {path}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK) or (
        path.exists() and not os.access(path, os.R_OK | os.W_OK)
    ):
        raise ConfigError(
            f"--database {path}: not writable by this user; the SuperLink keeps its state there"
        )
    return str(path)


def register_argv(site: str, pki_dir: Path | str, connection: str) -> list[str]:
    """The ``flwr supernode register`` command that admits ``site``'s public key.

    Raises
    ------
    PkiError
        When the site name is invalid.
    ConfigError
        When ``sites/SITE.pub`` is missing.
    """
    check_site_name(site)
    public_key = PkiLayout(Path(pki_dir).expanduser().absolute()).site_public_key(site)
    if not public_key.is_file():
        raise ConfigError(
            f"{public_key} not found: make it with fedlora pki site {site} --dir {pki_dir} "
            "(or get the site's .pub file)"
        )
    return [
        flower_executable("flwr"),
        "supernode",
        "register",
        str(public_key),
        connection,
        "--name",
        site,
    ]


def register_site(
    site: str,
    pki_dir: Path | str,
    connection: str,
    *,
    roster: Path | str | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 120.0,
) -> RosterEntry:
    """Register ``site``'s public key with the SuperLink and record it in the roster.

    Runs :func:`register_argv` with ``--format json``, reads the node id Flower gave the key
    and writes ``node id -> site, key fingerprint`` to the roster the ServerApp reads
    (:mod:`fedlora.deploy.roster`). Run it on the coordinator host (the SuperLink answers ``flwr
    supernode register`` only there, and the roster lives there).

    Parameters
    ----------
    site, pki_dir, connection : str, Path or str, str
        As :func:`register_argv`.
    roster : Path or str, optional
        The roster file; default ``PKI_DIR/roster.json`` (as :func:`superlink_argv`).
    env : Mapping[str, str], optional
        The environment of ``flwr`` (default :func:`flower_environment` of this one).
    timeout : float
        Seconds ``flwr`` may take.

    Returns
    -------
    RosterEntry
        The roster entry written.

    Raises
    ------
    ConfigError
        When ``flwr`` fails (the message holds its output) or prints no node id.
    RosterError
        When the roster exists but is invalid.
    """
    argv = [*register_argv(site, pki_dir, connection), "--format", "json"]
    public_key = Path(argv[3])
    result = run_flwr(argv, what=f"flwr supernode register {site}", env=env, timeout=timeout)
    node_id, message = _register_answer(result.stdout)
    if result.returncode != 0 or node_id is None:
        output = message or " ".join((result.stdout + result.stderr).split())[-2000:]
        raise ConfigError(f"registering {site} failed (flwr exit {result.returncode}): {output}")
    return write_roster_entry(
        default_roster_path(pki_dir) if roster is None else roster,
        node_id=node_id,
        site=site,
        key_sha256=ssh_fingerprint(public_key.read_text(encoding="utf-8")),
    )


def _register_answer(stdout: str) -> tuple[int | None, str | None]:
    """The node id, or Flower's error message, in ``flwr supernode register --format json``.

    Flower prints one JSON object (``{"success": true, "node-id": N}``, or ``success`` false
    and an ``error-message``) and exits 0 either way.
    """
    start = stdout.find("{")
    try:
        answer = json.loads(stdout[start:]) if start >= 0 else None
    except ValueError:
        return None, None
    if not isinstance(answer, dict):
        return None, None
    node_id = answer.get("node-id")
    if answer.get("success") is True and isinstance(node_id, int) and node_id is not True:
        return node_id, None
    message = answer.get("error-message")
    return None, " ".join(message.split()) if isinstance(message, str) else None

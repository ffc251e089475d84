"""A real deployment: the Flower command lines for the SuperLink, the sites and the operator.

``fedlora deploy`` prints and runs the Flower 1.41 processes of a multi-site federation; this
module builds their argument lists (so tests and process supervisors can start them too),
writes the ``flwr`` CLI's SuperLink connection and fetches finished run directories.

What runs where (docs/deployment.md):

* coordinator: Flower's SuperLink in a fedlora process
(:mod:`fedlora.flower_internals.link_superlink`: Fleet,
  Control and Runtime APIs on one HTTPS ``--host/--port``, the Control and Runtime APIs only for
  connections from the coordinator host itself, :mod:`fedlora.flower_internals.link_operator`; by
  default with held pulls), with the PKI's ``ca.pem``, ``server.pem``, ``server.key`` and
  ``--enable-supernode-auth``; runtime dependency installation is always off, so a run never
  re-resolves the project's dependencies (a CUDA torch of several GB);
* operator (on the coordinator host, or through an SSH tunnel to it): ``flwr supernode
  register`` for each site key (:func:`register_site`, which also records the site in the
  roster, :mod:`fedlora.deploy.roster`) and ``flwr run . CONNECTION --stream``, with a connection in
  ``$FLWR_HOME/config.toml``;
* each site: Flower's SuperNode with the site's ``site.toml`` (:mod:`fedlora.deploy.site_config`),
  by default with short polls and fedlora's warm worker
  (:mod:`fedlora.flower_internals.node_supernode`).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedlora.deploy.roster import RosterEntry, default_roster_path, write_roster_entry
from fedlora.deploy.site_config import SiteConfig
from fedlora.errors import ConfigError, RunDirError
from fedlora.flower_internals.link_hold import DEFAULT_HOLD_S, check_hold
from fedlora.flower_internals.tuning import DEFAULT_POLL_INTERVAL_S, check_poll_interval
from fedlora.io import atomic_write_text
from fedlora.pki.layout import PkiLayout, check_site_name, ssh_fingerprint, superlink_tls_flags

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "DEFAULT_PORT",
    "DEFAULT_RUNTIME_PORT",
    "INSECURE_WARNING",
    "FetchedRun",
    "check_device",
    "command_line",
    "fetch_run",
    "flower_environment",
    "flower_executable",
    "flwr_home",
    "free_port",
    "port_is_free",
    "register_argv",
    "register_site",
    "submit_argv",
    "superlink_argv",
    "supernode_argv",
    "write_connection",
]

DEFAULT_PORT = 9093
"""The SuperLink port fedlora uses (Fleet, Control and Runtime APIs share it in Flower 1.41;
only the Fleet API answers other hosts, :mod:`fedlora.flower_internals.link_operator`)."""
DEFAULT_RUNTIME_PORT = 9094
"""``flower-supernode``'s default local Runtime API port; a second node on a host needs another."""
CONFIG_FILE = "config.toml"
INSECURE_WARNING = (
    "fedlora: WARNING: --insecure: the SuperLink serves PLAINTEXT HTTP WITHOUT SuperNode "
    "authentication. Adapters, metrics and privacy spend travel unencrypted and ANY process "
    "that reaches the port can join as a site. Use this only on a closed test network."
)


def flower_executable(name: str) -> str:
    """The path of a Flower command (``flwr``, ``flower-superlink``, ...).

    The one installed beside this Python wins (the project's virtual environment), then
    ``PATH``.

    Raises
    ------
    ConfigError
        When the command is not installed.
    """
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise ConfigError(f"{name} not found: install fedlora's dependencies (flwr 1.41)")
    return found


def flower_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for Flower processes: no runtime dependency installs, venv on PATH.

    ``flwr`` and ``flower-superlink`` start further Flower commands by name, so the
    directory of this Python goes first on ``PATH``.
    """
    env = dict(os.environ if base is None else base)
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    bin_dir = str(Path(sys.executable).parent)
    parts = [bin_dir, *(p for p in env.get("PATH", "").split(os.pathsep) if p and p != bin_dir)]
    env["PATH"] = os.pathsep.join(parts)
    return env


def flwr_home(env: Mapping[str, str] | None = None) -> Path:
    """Flower's configuration folder: ``$FLWR_HOME``, else ``~/.flwr`` (as ``flwr`` 1.41)."""
    value = (os.environ if env is None else env).get("FLWR_HOME")
    return Path(value).expanduser() if value else Path.home() / ".flwr"


def port_is_free(host: str, port: int) -> bool:
    """Whether ``host:port`` can be bound now (a check, not a reservation)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS reports free on ``host`` (another process may take it before use)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _check_port(port: int, what: str) -> None:
    if not 1 <= port <= 65535:
        raise ConfigError(f"{what} must be 1-65535, got {port}")


def superlink_argv(
    pki_dir: Path | str,
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    insecure: bool = False,
    database: Path | str | None = None,
    pull_hold: float = DEFAULT_HOLD_S,
    roster: Path | str | None = None,
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
        memory and are lost on restart.
    pull_hold : float
        Seconds the SuperLink holds a pull that finds no message
        (:mod:`fedlora.flower_internals.link_hold`); 0: every pull is answered at once, as Flower
        does.
    roster : Path or str, optional
        The site roster the ServerApp reads (``$FEDLORA_ROSTER``, :mod:`fedlora.deploy.roster`);
        default ``PKI_DIR/roster.json``. An ``insecure`` SuperLink has no site keys and no
        roster.

    Raises
    ------
    ConfigError
        For a bad port or pull hold, or a missing TLS file.
    """
    _check_port(port, "--port")
    argv = [sys.executable, "-m", "fedlora.flower_internals.link_superlink"]
    argv += ["--pull-hold", repr(check_hold(pull_hold))]
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
        argv += ["--database", str(Path(database).expanduser().absolute())]
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
    try:
        result = subprocess.run(
            argv,
            env=flower_environment(env),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ConfigError(
            f"flwr supernode register {site} did not answer in {timeout:.0f} s"
        ) from None
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


def supernode_argv(
    config: SiteConfig,
    *,
    runtime_port: int | None = None,
    runtime_host: str = "127.0.0.1",
    warm: bool = True,
    poll_interval: float = DEFAULT_POLL_INTERVAL_S,
) -> list[str]:
    """The command line of a validated site's SuperNode.

    Parameters
    ----------
    config : SiteConfig
        From :func:`fedlora.deploy.site_config.load_site_config`.
    runtime_port : int, optional
        The node's local Runtime API port (its ClientApp processes talk to it); default 9094,
        or a free port when 9094 is taken (a second node on the same host).
    runtime_host : str
        Where the Runtime API listens; keep it on loopback.
    warm : bool
        ``True`` (default): Flower's SuperNode with short polls and fedlora's warm worker
        (:mod:`fedlora.flower_internals.node_supernode`); ``False``: plain ``flower-supernode``, a
        fresh
        ``flwr-clientapp`` process per message (it runs whatever app a run submits).
    poll_interval : float
        The warm node's longest wait between pulls, in seconds.

    Raises
    ------
    ConfigError
        For a bad port or poll interval, or ``heartbeat-interval`` with ``warm=False``.
    """
    if runtime_port is None:
        runtime_port = (
            DEFAULT_RUNTIME_PORT
            if port_is_free(runtime_host, DEFAULT_RUNTIME_PORT)
            else free_port(runtime_host)
        )
    _check_port(runtime_port, "runtime port")
    if warm:
        check_poll_interval(poll_interval)
        argv = [sys.executable, "-m", "fedlora.flower_internals.node_supernode"]
        argv += ["--poll-interval", repr(poll_interval)]
        if config.heartbeat_interval is not None:
            argv += ["--heartbeat-interval", repr(config.heartbeat_interval)]
        argv += ["--worker", "--"]
    elif config.heartbeat_interval is not None:
        raise ConfigError(
            f"{config.source}: [connection] heartbeat-interval needs fedlora's node; plain "
            "flower-supernode (--cold) always uses Flower's 30 s: remove one of them"
        )
    else:
        argv = [flower_executable("flower-supernode")]
    argv += ["--superlink", config.superlink]
    if config.insecure:
        argv.append("--insecure")
    else:
        argv += ["--root-certificates", str(config.root_certificates)]
    if config.auth_private_key is not None:
        argv += ["--auth-supernode-private-key", str(config.auth_private_key)]
    return [
        *argv,
        "--node-config",
        config.to_node_config(),
        "--host",
        runtime_host,
        "--port",
        str(runtime_port),
    ]


def check_device(config: SiteConfig) -> None:
    """Refuse ``device = "cuda"`` on a node without a CUDA device (imports torch).

    Raises
    ------
    ConfigError
        When the site asks for CUDA and torch sees none.
    """
    if config.device != "cuda":
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(
            f"{config.source}: [site] device is 'cuda' but no CUDA device is available"
        )


def submit_argv(
    connection: str, *, app_dir: Path | str = ".", run_config: str | None = None
) -> list[str]:
    """The ``flwr run APP CONNECTION --stream`` command that submits a run.

    Parameters
    ----------
    connection : str
        The SuperLink connection in ``$FLWR_HOME/config.toml`` (see :func:`write_connection`).
    app_dir : Path or str
        The Flower App (this project's folder).
    run_config : str, optional
        Run-config overrides, e.g. ``"rounds=3 sites=2 out='/srv/fedlora/runs'"``; ``out`` is
        a folder on the SuperLink host, where the ServerApp writes the run directory.
    """
    argv = [flower_executable("flwr"), "run", str(app_dir), connection, "--stream"]
    if run_config:
        argv += ["--run-config", run_config]
    return argv


def write_connection(
    name: str,
    address: str,
    *,
    pki_dir: Path | str | None = None,
    insecure: bool = False,
    make_default: bool = False,
    home: Path | None = None,
) -> Path:
    """Add or update ``[superlink.NAME]`` in the ``flwr`` CLI's ``config.toml``.

    Flower 1.41 reads SuperLink connections from ``$FLWR_HOME/config.toml`` (default
    ``~/.flwr``): ``address`` and an absolute ``root-certificates`` path, or
    ``insecure = true``. Other connections and settings are kept; a new file starts from
    Flower's own default (which holds its ``local`` simulation connection).

    Parameters
    ----------
    name : str
        The connection name given to ``flwr run . NAME`` and ``flwr supernode register``.
    address : str
        The SuperLink's ``HOST:PORT``.
    pki_dir : Path or str, optional
        The folder with the federation's ``ca.pem`` (required unless ``insecure``).
    insecure : bool
        A plaintext connection (an ``--insecure`` SuperLink).
    make_default : bool
        Also make it ``[superlink] default``.
    home : Path, optional
        The Flower folder; default ``$FLWR_HOME`` or ``~/.flwr``.

    Returns
    -------
    Path
        The configuration file written.

    Raises
    ------
    ConfigError
        For a bad name or address, a missing ``ca.pem``, or an unreadable config file.
    """
    import tomli_w
    from flwr.cli.constant import DEFAULT_FLOWER_CONFIG_TOML

    if not name or not all(char.isalnum() or char in "-_" for char in name):
        raise ConfigError(f"connection name must be letters, digits, '-' or '_', got {name!r}")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or "/" in address:
        raise ConfigError(f"--address must be HOST:PORT without a URL prefix, got {address!r}")
    entry: dict[str, Any] = {"address": address}
    if insecure:
        entry["insecure"] = True
    else:
        if pki_dir is None:
            raise ConfigError("a TLS connection needs --pki DIR (the folder with ca.pem)")
        ca = PkiLayout(Path(pki_dir).expanduser().absolute()).ca_cert
        if not ca.is_file():
            raise ConfigError(f"{ca} not found: copy the federation's ca.pem there")
        entry["root-certificates"] = str(ca)
    path = (home or flwr_home()) / CONFIG_FILE
    try:
        text = path.read_text(encoding="utf-8") if path.exists() else DEFAULT_FLOWER_CONFIG_TOML
        document = tomllib.loads(text)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read the Flower configuration {path}: {exc}") from None
    superlink = document.setdefault("superlink", {})
    if not isinstance(superlink, dict):
        raise ConfigError(f"{path}: [superlink] is not a table")
    superlink[name] = entry
    if make_default:
        superlink["default"] = name
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, tomli_w.dumps(document))
    return path


@dataclass(frozen=True)
class FetchedRun:
    """A run directory copied by :func:`fetch_run`."""

    path: Path
    state: str
    report: Path


def fetch_run(run_dir: Path | str, to: Path | str, *, force: bool = False) -> FetchedRun:
    """Copy a run directory into a local runs folder and write its privacy report there.

    The ServerApp writes ``<out>/<run-id>/`` on the SuperLink host (``out`` from the run
    config, an absolute path there): adapters per round and final, ``metrics.jsonl``,
    ``config.json``, ``status.json`` and the report. Run this where that folder is reachable
    (on the SuperLink host, or on a mount or copy of it).

    Parameters
    ----------
    run_dir : Path or str
        The run directory on the SuperLink host.
    to : Path or str
        The local runs folder; the run lands in ``to/<run-id>/``.
    force : bool
        Replace an earlier copy of the same run.

    Returns
    -------
    FetchedRun
        Where the copy is, the run's state and its report folder.

    Raises
    ------
    RunDirError
        When ``run_dir`` is not a run directory, the copy exists and ``force`` is false, or
        the report cannot be written.
    """
    from fedlora.report.build import write_report
    from fedlora.rundir import RunDirectoryReader

    source = Path(run_dir).expanduser().absolute()
    state = str(RunDirectoryReader(source).read_status().get("state", "unknown"))
    target_root = Path(to).expanduser().absolute()
    target = target_root / source.name
    if target == source:
        raise RunDirError(f"{source} is already in {target_root}")
    if target.exists() and not force:
        raise RunDirError(f"{target} exists: pass --force to replace it")
    target_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{source.name}-", dir=target_root))
    try:
        copied = staging / source.name
        shutil.copytree(source, copied, symlinks=True)
        if target.exists():
            shutil.rmtree(target)
        copied.rename(target)
    except OSError as exc:
        raise RunDirError(f"cannot copy {source} to {target}: {exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return FetchedRun(path=target, state=state, report=write_report(target))


def command_line(argv: Sequence[str]) -> str:
    """The shell-quoted form of ``argv``, as ``fedlora deploy`` prints it before running it."""
    return shlex.join(argv)

"""A real multi-site deployment on one machine (127.0.0.1), for integration tests and benchmarks.

:class:`LocalDeployment` starts the same Flower processes a real federation runs
(:mod:`fedlora.deploy.commands`), each in its own session, all on loopback::

    from fedlora.deploy.loopback import LocalDeployment, SiteData

    sites = {
        "site-a": SiteData(Path("data/a-train.jsonl"), Path("data/a-test.jsonl")),
        "site-b": SiteData(Path("data/b-train.jsonl")),
    }
    with LocalDeployment(tmp_path / "federation", sites) as federation:
        run_dir = federation.submit({"rounds": 2, "sites": 2, "task": "sft",
                                     "noise-multiplier": 1.0})
        assert (run_dir / "adapters" / "final" / "adapter_model.safetensors").exists()

On entering it

1. makes a federation PKI under ``ROOT/pki`` (:mod:`fedlora.pki.commands`: CA, a server certificate
for
   ``127.0.0.1`` and ``localhost``, one authentication key per site);
2. starts the SuperLink (:func:`fedlora.deploy.commands.superlink_argv`: Flower's, with held pulls
   unless ``pull_hold=0``) with TLS and SuperNode authentication on a free 127.0.0.1 port,
   with a private ``FLWR_HOME`` (``ROOT/flwr-home``), and waits until it serves TLS;
3. writes the ``flwr`` CLI connection (``fed`` by default) and registers every site's key
   (:func:`fedlora.deploy.commands.register_site`: each node id and site name go to the SuperLink's
   roster, ``ROOT/pki/roster.json``, that its ServerApp reads from ``$FEDLORA_ROSTER``);
4. writes each site's ``ROOT/NAME/site.toml`` as an operator would (its own copy of the data
   files under ``ROOT/NAME/data``, relative paths, its own ``ROOT/NAME/ledger``) and starts its
   ``flower-supernode``, through :func:`fedlora.deploy.commands.supernode_argv` or through the
   ``fedlora deploy supernode`` command line (:attr:`SiteData.start_with`);
5. waits until every SuperNode is activated.

:meth:`LocalDeployment.submit` runs ``flwr run . CONNECTION --stream`` from the Flower App's
folder and returns the run directory; :meth:`LocalDeployment.stop` (also on leaving the
``with`` block, and when start-up fails) stops every process group it started and then any
process whose command line still names ``ROOT`` (the ``flower-superexec`` and
``flwr-serverapp`` processes Flower detaches). ``ROOT`` must therefore be a folder of its own:
it must be empty or not exist yet.

Every process writes ``ROOT/logs/NAME.log``; :meth:`LocalDeployment.log` reads one back.
Linux only (the clean-up reads ``/proc``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal

from fedlora.config import DeviceChoice
from fedlora.deploy import commands as deploy
from fedlora.deploy.roster import default_roster_path
from fedlora.deploy.site_config import SiteConfig, load_site_config, node_config_value
from fedlora.errors import ConfigError, FedloraError
from fedlora.flower_internals.link_hold import DEFAULT_HOLD_S, check_hold
from fedlora.flower_internals.tuning import DEFAULT_POLL_INTERVAL_S
from fedlora.pki import commands as pki

__all__ = [
    "LocalDeployment",
    "LoopbackError",
    "RunConfigValue",
    "SiteData",
    "run_config_string",
    "wait_for",
]

logger = logging.getLogger(__name__)

RunConfigValue = bool | int | float | str
"""A value of Flower's flat run config."""

_HOST = "127.0.0.1"
_LOG_TAIL = 4000


class LoopbackError(FedloraError):
    """A process of a :class:`LocalDeployment` did not start, register or finish as expected."""


@dataclass(frozen=True)
class SiteData:
    """One site of a :class:`LocalDeployment`: its data and how its SuperNode is started.

    Attributes
    ----------
    train_file : Path
        The site's training file (JSONL or CSV); copied into the site's folder.
    test_file : Path, optional
        Its held-out file; without it the ClientApp holds out a seeded fraction of the
        training file.
    budget_epsilon : float
        ``[privacy] budget-epsilon`` of its ``site.toml``: the lifetime ε budget of its data.
    device : {"cpu", "auto", "cuda"}
        ``[site] device``; ``cpu`` hides every GPU from the site's ClientApp processes.
    start_with : {"python", "cli"}
        ``python`` starts the SuperNode from :func:`fedlora.deploy.commands.supernode_argv`; ``cli``
        through ``python -m fedlora.cli.main deploy supernode --site-config ...``, the command a
        site operator runs.
    warm : bool
        ``True``: short polls and fedlora's warm worker (the default of ``fedlora deploy
        supernode``); ``False``: plain ``flower-supernode`` (``--cold``).
    cpu_threads : int, optional
        ``[site] cpu-threads``: torch's CPU threads on that node (default: all cores).
    heartbeat_interval : float, optional
        ``[connection] heartbeat-interval``: seconds between the node's heartbeats (warm
        nodes only; default Flower's 30 s).
    poll_interval : float
        A warm node's longest wait between pulls (``--poll-interval``).
    """

    train_file: Path
    test_file: Path | None = None
    budget_epsilon: float = 50.0
    device: DeviceChoice = "cpu"
    start_with: Literal["python", "cli"] = "python"
    warm: bool = True
    cpu_threads: int | None = None
    heartbeat_interval: float | None = None
    poll_interval: float = DEFAULT_POLL_INTERVAL_S


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` every 0.3 s until it holds.

    Raises
    ------
    LoopbackError
        When it does not hold within ``timeout`` seconds; the message names ``what``.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.3)
    raise LoopbackError(f"timed out after {timeout:.0f}s waiting for {what}")


def run_config_string(values: Mapping[str, RunConfigValue]) -> str:
    """Render a run config as the ``--run-config`` string of ``flwr run``.

    Integers stay integers and floats floats (Flower checks them against the App's
    ``[tool.flwr.app.config]`` types), strings become TOML literal strings.

    Raises
    ------
    ConfigError
        For a key that is not ``kebab-case`` letters and digits, or a value Flower's parser
        cannot carry.
    """
    parts = []
    for key, value in values.items():
        if not key or not all(char.isalnum() or char in "-_." for char in key):
            raise ConfigError(f"run config key {key!r} must be letters, digits, '-', '_' or '.'")
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int):
            text = str(value)
        else:
            text = node_config_value(value)
        parts.append(f"{key}={text}")
    return " ".join(parts)


class LocalDeployment:
    """A TLS SuperLink with SuperNode authentication and one SuperNode per site, on loopback.

    Use it as a context manager (or call :meth:`start` and :meth:`stop`); see the module
    documentation for what it starts and where it writes.

    Parameters
    ----------
    root : Path
        A folder of its own for the PKI, ``FLWR_HOME``, site folders, logs and run
        directories; it must be empty or not exist. Processes still naming it are stopped
        by :meth:`stop`.
    sites : Mapping[str, SiteData]
        Site name (letters, digits, ``-``, ``_``) to its data.
    tls : bool
        TLS and SuperNode authentication (the default, as in production). ``False`` runs a
        plaintext SuperLink without authentication and sites with ``insecure = true`` (no
        PKI, nothing registered): for closed test networks only.
    app_dir : Path, optional
        The Flower App that :meth:`submit` runs; default the fedlora project this module
        belongs to (a source checkout).
    connection : str
        The name of the ``flwr`` CLI connection written to ``ROOT/flwr-home/config.toml``.
    start_timeout : float
        Seconds to wait for the SuperLink, and then for every SuperNode, to come up.
    pull_hold : float
        Seconds the SuperLink holds a pull that finds no message
        (:mod:`fedlora.flower_internals.link_hold`); 0 starts plain ``flower-superlink``.

    Attributes
    ----------
    root, pki_dir, home, logs : Path
        The deployment's folder, its PKI, its ``FLWR_HOME`` and its process logs.
    roster : Path
        The site roster (node id -> site) the SuperLink gives its ServerApp
        (:mod:`fedlora.deploy.roster`); written at registration (TLS deployments only).
    port : int
        The SuperLink's port on 127.0.0.1 (set by :meth:`start`).
    env : dict[str, str]
        The environment of every Flower process (private ``FLWR_HOME``, runtime dependency
        installation off); use it to run further ``flwr`` commands against this SuperLink.
    site_configs : dict[str, SiteConfig]
        Each site's validated ``site.toml`` (set by :meth:`start`).

    Raises
    ------
    ConfigError
        When ``root`` is not empty, ``sites`` is empty, or no Flower App is found.
    """

    def __init__(
        self,
        root: Path,
        sites: Mapping[str, SiteData],
        *,
        tls: bool = True,
        app_dir: Path | None = None,
        connection: str = "fed",
        start_timeout: float = 120.0,
        pull_hold: float = DEFAULT_HOLD_S,
    ) -> None:
        self.root = Path(root).expanduser().absolute()
        if self.root.exists() and (not self.root.is_dir() or any(self.root.iterdir())):
            raise ConfigError(
                f"{self.root} is not an empty folder: a LocalDeployment needs a folder of its "
                "own (stop() ends every process that names it)"
            )
        if not sites:
            raise ConfigError("a LocalDeployment needs at least one site")
        self.sites = dict(sites)
        self.tls = tls
        self.app_dir = _app_dir(app_dir)
        self.connection = connection
        self.start_timeout = start_timeout
        self.pull_hold = check_hold(pull_hold)
        self.pki_dir = self.root / "pki"
        self.home = self.root / "flwr-home"
        self.logs = self.root / "logs"
        self.roster = default_roster_path(self.pki_dir)
        self.port = 0
        self.env: dict[str, str] = {}
        self.site_configs: dict[str, SiteConfig] = {}
        self.site_processes: dict[str, subprocess.Popen[bytes]] = {}
        self._started: list[subprocess.Popen[bytes]] = []
        self._submitted = 0

    @property
    def address(self) -> str:
        """The SuperLink's ``HOST:PORT``."""
        return f"{_HOST}:{self.port}"

    def __enter__(self) -> LocalDeployment:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Make the PKI, start the SuperLink, register the sites and start their SuperNodes.

        Everything started so far is stopped again when a step fails.

        Raises
        ------
        LoopbackError
            When a process exits early or does not come up within ``start_timeout``, or a
            registration fails.
        FedloraError
            For invalid site data (the ``site.toml`` checks of
            :func:`fedlora.deploy.site_config.load_site_config`).
        """
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        started = time.monotonic()
        self.root.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir()
        self.home.mkdir()
        if self.tls:
            pki.init_ca(self.pki_dir)
            pki.issue_server_cert(self.pki_dir, dns_names=["localhost"], ip_addresses=[_HOST])
            for name in self.sites:
                pki.create_site_key(self.pki_dir, name)
        else:
            logger.warning("%s", deploy.INSECURE_WARNING)
        self.env = deploy.flower_environment({**os.environ, "FLWR_HOME": str(self.home)})
        self.port = deploy.free_port(_HOST)
        superlink = self.start_process(
            "superlink",
            deploy.superlink_argv(
                self.pki_dir,
                host=_HOST,
                port=self.port,
                insecure=not self.tls,
                pull_hold=self.pull_hold,
            ),
        )
        self._wait_alive(
            lambda: _serves(self.port, self.pki_dir / "ca.pem" if self.tls else None),
            {"superlink": superlink},
            "the SuperLink to serve " + ("TLS" if self.tls else "plaintext"),
        )
        deploy.write_connection(
            self.connection,
            self.address,
            pki_dir=self.pki_dir if self.tls else None,
            insecure=not self.tls,
            home=self.home,
        )
        if self.tls:  # each flwr process spends seconds importing: register all at once
            with ThreadPoolExecutor(max_workers=len(self.sites)) as pool:
                list(pool.map(self._register, self.sites))
        nodes = {name: self._start_site(name, data) for name, data in self.sites.items()}
        self._wait_alive(
            lambda: all("SuperNode ID:" in self.log(name) for name in nodes),
            nodes,
            f"{len(nodes)} SuperNode(s) to activate",
        )
        logger.info(
            "local deployment up in %.1fs: SuperLink %s, sites %s (%s)",
            time.monotonic() - started,
            self.address,
            ", ".join(self.sites),
            self.root,
        )

    def _register(self, name: str) -> None:
        try:
            entry = deploy.register_site(name, self.pki_dir, self.connection, env=self.env)
        except ConfigError as exc:
            raise LoopbackError(str(exc)[-_LOG_TAIL:]) from None
        logger.info("registered %s with the SuperLink as node %d", name, entry.node_id)

    def kill_site(self, name: str) -> None:
        """SIGKILL site ``name``'s node (its SuperNode and warm worker), as a crash would.

        Its ledger and data stay on its disk; :meth:`restart_site` starts it again.
        """
        process = self.site_processes[name]
        _signal_group(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        logger.info("killed site %s (pid %d)", name, process.pid)

    def restart_site(self, name: str, timeout: float = 180.0) -> subprocess.Popen[bytes]:
        """Start site ``name``'s node again (``site.toml``, ledger, key) until it is back.

        As a process supervisor would: the SuperLink refuses to activate a node whose previous
        session it still counts as online (until two heartbeats are missed), and
        ``flower-supernode`` then exits; so the node is started again every few seconds until
        it activates.

        Raises
        ------
        LoopbackError
            When the node is not back within ``timeout`` seconds.
        """
        marker = "SuperNode ID:"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            seen = self.log(name).count(marker)
            process = self._launch_site(name, self.sites[name])
            self.site_processes[name] = process
            while process.poll() is None and time.monotonic() < deadline:
                if self.log(name).count(marker) > seen:
                    logger.info("site %s is back (pid %d)", name, process.pid)
                    return process
                time.sleep(0.5)
            if process.poll() is None:
                break
            time.sleep(3)
        raise LoopbackError(f"site {name} did not come back within {timeout:.0f} s")

    def _start_site(self, name: str, data: SiteData) -> subprocess.Popen[bytes]:
        config = load_site_config(self._write_site_toml(name, data), allow_insecure=not self.tls)
        self.site_configs[name] = config
        self.site_processes[name] = self._launch_site(name, data)
        return self.site_processes[name]

    def _launch_site(self, name: str, data: SiteData) -> subprocess.Popen[bytes]:
        config = self.site_configs[name]
        runtime_port = deploy.free_port(_HOST)
        if data.start_with == "cli":
            argv = [
                sys.executable,
                "-m",
                "fedlora.cli.main",
                "deploy",
                "supernode",
                "--site-config",
                str(config.source),
                "--runtime-port",
                str(runtime_port),
            ]
            if not self.tls:
                argv.append("--insecure")
            if data.warm:
                argv += ["--poll-interval", repr(data.poll_interval)]
            else:
                argv.append("--cold")
            return self.start_process(name, argv)
        deploy.check_device(config)
        return self.start_process(
            name,
            deploy.supernode_argv(
                config,
                runtime_port=runtime_port,
                warm=data.warm,
                poll_interval=data.poll_interval,
            ),
            extra_env=config.supernode_environment(),
        )

    def _write_site_toml(self, name: str, data: SiteData) -> Path:
        """Write ``ROOT/NAME/site.toml`` with relative data and ledger paths."""
        import tomli_w

        folder = self.root / name
        (folder / "data").mkdir(parents=True)
        site: dict[str, str | int] = {"name": name, "device": data.device}
        if data.cpu_threads is not None:
            site["cpu-threads"] = data.cpu_threads
        for key, source, stem in (
            ("train-file", data.train_file, "train"),
            ("test-file", data.test_file, "test"),
        ):
            if source is None:
                continue
            target = Path("data") / f"{stem}{Path(source).suffix}"
            shutil.copyfile(source, folder / target)
            site[key] = target.as_posix()
        connection: dict[str, str | bool | float] = {"superlink": self.address}
        if data.heartbeat_interval is not None:
            connection["heartbeat-interval"] = float(data.heartbeat_interval)
        if self.tls:
            connection["root-certificates"] = str(self.pki_dir / "ca.pem")
            connection["auth-private-key"] = str(self.pki_dir / "sites" / f"{name}.key")
        else:
            connection["insecure"] = True
        document = {
            "site": site,
            "privacy": {"budget-epsilon": float(data.budget_epsilon), "ledger-dir": "ledger"},
            "connection": connection,
        }
        path = folder / "site.toml"
        path.write_text(tomli_w.dumps(document), encoding="utf-8")
        return path

    def start_process(
        self, name: str, argv: list[str], *, extra_env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` in a session of its own, logging to ``ROOT/logs/NAME.log``.

        The process is stopped with the others by :meth:`stop`. Tests use this to start
        further processes against the deployment (a SuperNode with a wrong key, ...).

        Parameters
        ----------
        name : str
            The log's name; reusing one appends to the log.
        argv : list of str
            The command line.
        extra_env : Mapping[str, str], optional
            Variables added to :attr:`env` for this process.
        """
        return self._popen(name, argv, extra_env=extra_env)

    def _popen(
        self,
        name: str,
        argv: list[str],
        *,
        extra_env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        env = {**self.env, **(extra_env or {})}
        with (self.logs / f"{name}.log").open("ab") as log:
            process = subprocess.Popen(
                argv,
                env=env,
                cwd=cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self._started.append(process)
        logger.info("started %s (pid %d): %s", name, process.pid, deploy.command_line(argv))
        return process

    def log(self, name: str) -> str:
        """The output so far of the process started as ``name`` (empty before it writes)."""
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _wait_alive(
        self,
        condition: Callable[[], bool],
        processes: Mapping[str, subprocess.Popen[bytes]],
        what: str,
    ) -> None:
        """Wait for ``condition``; fail at once, with its log, when one of ``processes`` ends."""

        def ready() -> bool:
            for name, process in processes.items():
                if process.poll() is not None:
                    raise LoopbackError(
                        f"{name} exited with {process.returncode} while waiting for {what}; "
                        f"end of {self.logs / (name + '.log')}:\n{self.log(name)[-_LOG_TAIL:]}"
                    )
            return condition()

        wait_for(ready, self.start_timeout, what)

    def submit(
        self,
        run_config: Mapping[str, RunConfigValue],
        *,
        out: Path | None = None,
        timeout: float = 1800.0,
    ) -> Path:
        """Run ``flwr run . CONNECTION --run-config ... --stream`` and return the run directory.

        The command runs from the Flower App's folder and waits for the run to end.

        Parameters
        ----------
        run_config : Mapping[str, RunConfigValue]
            Run-config overrides (kebab-case keys of ``[tool.flwr.app.config]``) without
            ``out``, e.g. ``{"rounds": 2, "sites": 2, "noise-multiplier": 1.0}``.
        out : Path, optional
            The run config's ``out``, where the ServerApp writes the run directory; it must
            be empty or not exist. Default ``ROOT/server-runs/run-N`` for the N-th submission.
        timeout : float
            Seconds to wait for ``flwr run`` to end; it is stopped after that.

        Returns
        -------
        Path
            The absolute run directory ``OUT/<run-id>``. Its ``status.json`` says whether the
            run completed.

        Raises
        ------
        ConfigError
            When ``run_config`` holds ``out`` or ``out`` is not empty.
        LoopbackError
            When the deployment is not started, ``flwr run`` fails or times out, or it leaves
            no single run directory in ``out``.
        """
        if not self.port:
            raise LoopbackError("the deployment is not started: use it in a with block")
        if "out" in run_config:
            raise ConfigError(
                "give the run directory's parent as submit(out=...), not in run_config"
            )
        self._submitted += 1
        name = f"flwr-run-{self._submitted}"
        target = Path(out or self.root / "server-runs" / f"run-{self._submitted}")
        target = target.expanduser().absolute()
        if target.exists() and any(target.iterdir()):
            raise ConfigError(f"{target} is not empty: submit needs a fresh out folder")
        target.mkdir(parents=True, exist_ok=True)
        argv = deploy.submit_argv(
            self.connection,
            app_dir=".",
            run_config=run_config_string({**run_config, "out": str(target)}),
        )
        started = time.monotonic()
        process = self._popen(name, argv, cwd=self.app_dir)
        try:
            returncode = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _signal_group(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
            raise LoopbackError(
                f"flwr run did not end within {timeout:.0f}s; end of its log:\n"
                f"{self.log(name)[-_LOG_TAIL:]}"
            ) from None
        if returncode != 0:
            raise LoopbackError(
                f"flwr run exited with {returncode}; end of its log:\n{self.log(name)[-_LOG_TAIL:]}"
            )
        runs = [
            path for path in target.iterdir() if path.is_dir() and not path.name.startswith(".")
        ]
        if len(runs) != 1:
            raise LoopbackError(
                f"flwr run ended but {target} holds {len(runs)} run directories, not 1; "
                f"end of its log:\n{self.log(name)[-_LOG_TAIL:]}"
            )
        logger.info("run %s ended after %.1fs", runs[0], time.monotonic() - started)
        return runs[0]

    def stop(self) -> None:
        """Stop every process this deployment started, then any process still naming ``root``.

        SIGTERM to each process group, up to 15 s to exit, then SIGKILL; safe to call twice.
        """
        groups = [process.pid for process in self._started]
        for pgid in groups:
            _signal_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for process in self._started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
        for pgid in groups:
            _signal_group(pgid, signal.SIGKILL)
        for process in self._started:
            if process.poll() is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=10)
        # What Flower detached from our process groups (flower-superexec, flwr-serverapp)
        # but still names our folder.
        leftovers = _pids_naming(self.root)
        for pid in leftovers:
            _signal_pid(pid, signal.SIGKILL)
        if groups or leftovers:
            logger.info(
                "stopped %d process group(s) and %d detached process(es) of %s",
                len(groups),
                len(leftovers),
                self.root,
            )
        self._started.clear()


def _app_dir(app_dir: Path | None) -> Path:
    folder = Path(app_dir) if app_dir is not None else Path(__file__).resolve().parents[1]
    folder = folder.expanduser().absolute()
    pyproject = folder / "pyproject.toml"
    if not pyproject.is_file() or "[tool.flwr.app]" not in pyproject.read_text(encoding="utf-8"):
        raise ConfigError(
            f"{folder} is not a Flower App (no pyproject.toml with [tool.flwr.app]): pass "
            "app_dir, the fedlora project folder"
        )
    return folder


def _serves(port: int, cafile: Path | None) -> bool:
    """Whether the SuperLink accepts connections (and completes a verified TLS handshake)."""
    try:
        with socket.create_connection((_HOST, port), timeout=5) as raw:
            if cafile is None:
                return True
            context = ssl.create_default_context(cafile=str(cafile))
            with context.wrap_socket(raw, server_hostname=_HOST):
                return True
    except OSError:
        return False


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _signal_pid(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _pids_naming(root: Path) -> list[int]:
    """Processes (other than this one and its parent) with ``root`` in their command line."""
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    marker = str(root)
    inside = marker + os.sep
    skip = {os.getpid(), os.getppid()}
    pids = []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) in skip:
            continue
        try:
            args = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if any(arg == marker or inside in arg for arg in args):
            pids.append(int(entry.name))
    return pids

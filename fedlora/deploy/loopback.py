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

1. makes a federation PKI under ``ROOT/pki`` (:mod:`fedlora.pki.commands`: CA, a server
   certificate for ``127.0.0.1`` and ``localhost``, one authentication key and one
   secure-aggregation identity key per site, and the CA-signed ``secagg-roster.json`` of
   them that every site's ``site.toml`` names: a run with ``secure-aggregation = true``
   authenticates the sites' keys as a real federation's);
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

Every process writes ``ROOT/logs/NAME.log`` (:mod:`fedlora.deploy.processes`);
:meth:`LocalDeployment.log` reads one back. Each site's folder is written as its operator would
(:mod:`fedlora.deploy.loopback_site`). Linux only (the clean-up reads ``/proc``).
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType

from fedlora.deploy import commands as deploy
from fedlora.deploy.flower_values import RunConfigValue, run_config_string
from fedlora.deploy.flwr_cli import flower_app_dir
from fedlora.deploy.host import serves
from fedlora.deploy.loopback_site import ACTIVATED, SiteData, SiteNodes
from fedlora.deploy.processes import LOG_TAIL, LoopbackError, ProcessGroup, wait_for
from fedlora.deploy.roster import default_roster_path
from fedlora.deploy.site_config import SiteConfig
from fedlora.errors import ConfigError
from fedlora.flower_internals.link_hold import DEFAULT_HOLD_S, check_hold
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

_HOST = "127.0.0.1"


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
        self.app_dir = flower_app_dir(app_dir)
        self.connection = connection
        self.start_timeout = start_timeout
        self.pull_hold = check_hold(pull_hold)
        self.pki_dir = self.root / "pki"
        self.home = self.root / "flwr-home"
        self.logs = self.root / "logs"
        self.roster = default_roster_path(self.pki_dir)
        self.port = 0
        self.env: dict[str, str] = {}
        self._processes = ProcessGroup(self.logs)
        self._sites = SiteNodes(
            self.root,
            self.sites,
            pki_dir=self.pki_dir if tls else None,
            start_process=self.start_process,
            group=self._processes,
            host=_HOST,
        )
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
        self._processes.wait_alive(
            lambda: serves(_HOST, self.port, self.pki_dir / "ca.pem" if self.tls else None),
            {"superlink": superlink},
            "the SuperLink to serve " + ("TLS" if self.tls else "plaintext"),
            self.start_timeout,
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
        nodes = {name: self._sites.start(name, self.address) for name in self.sites}
        self._processes.wait_alive(
            lambda: all(ACTIVATED in self.log(name) for name in nodes),
            nodes,
            f"{len(nodes)} SuperNode(s) to activate",
            self.start_timeout,
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
            raise LoopbackError(str(exc)[-LOG_TAIL:]) from None
        logger.info("registered %s with the SuperLink as node %d", name, entry.node_id)

    def kill_site(self, name: str) -> None:
        """SIGKILL site ``name``'s node (its SuperNode and warm worker), as a crash would.

        Its ledger and data stay on its disk; :meth:`restart_site` starts it again.
        """
        self._sites.kill(name)

    def restart_site(self, name: str, timeout: float = 180.0) -> subprocess.Popen[bytes]:
        """Start site ``name``'s node again (``site.toml``, ledger, key) until it is back.

        Raises
        ------
        LoopbackError
            When the node is not back within ``timeout`` seconds
            (:meth:`fedlora.deploy.loopback_site.SiteNodes.restart`).
        """
        return self._sites.restart(name, timeout)

    @property
    def site_configs(self) -> dict[str, SiteConfig]:
        """Each site's validated ``site.toml`` (filled by :meth:`start`)."""
        return self._sites.configs

    @property
    def site_processes(self) -> dict[str, subprocess.Popen[bytes]]:
        """Each site's current node process."""
        return self._sites.processes

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
        return self._processes.start(name, argv, env={**self.env, **(extra_env or {})})

    def log(self, name: str) -> str:
        """The output so far of the process started as ``name`` (empty before it writes)."""
        return self._processes.log(name)

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
        self._processes.run_to_end(
            name, argv, env=self.env, cwd=self.app_dir, timeout=timeout, what="flwr run"
        )
        runs = [
            path for path in target.iterdir() if path.is_dir() and not path.name.startswith(".")
        ]
        if len(runs) != 1:
            raise LoopbackError(
                f"flwr run ended but {target} holds {len(runs)} run directories, not 1; "
                f"end of its log:\n{self._processes.log_tail(name)}"
            )
        logger.info("run %s ended after %.1fs", runs[0], time.monotonic() - started)
        return runs[0]

    def stop(self) -> None:
        """Stop every process this deployment started, then any process still naming ``root``.

        SIGTERM to each process group, up to 15 s to exit, then SIGKILL; safe to call twice.
        """
        self._processes.stop(self.root)

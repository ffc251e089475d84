"""The sites of a loopback deployment: their data, their ``site.toml`` and their nodes.

:class:`SiteData` says what a :class:`fedlora.deploy.loopback.LocalDeployment` site holds and
how its SuperNode starts; :func:`write_site_toml` writes the site's folder as a site operator
would; :class:`SiteNodes` starts, kills and restarts the sites' SuperNodes.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from fedlora.config import DeviceChoice
from fedlora.deploy.host import free_port
from fedlora.deploy.processes import ProcessGroup
from fedlora.deploy.site_config import SiteConfig, load_site_config
from fedlora.deploy.supernode import check_device, supernode_argv
from fedlora.flower_internals.tuning import DEFAULT_POLL_INTERVAL_S

__all__ = ["SiteData", "SiteNodes", "cli_supernode_argv", "write_site_toml"]

logger = logging.getLogger(__name__)

ACTIVATED = "SuperNode ID:"
"""What a SuperNode logs once the SuperLink has activated it."""


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
    verbose : bool
        A warm node logs every request and Flower's DEBUG lines (``--verbose``): the
        deployment tests read its pulls from its log. ``False``: the default of ``fedlora
        deploy supernode`` (:mod:`fedlora.quiet`).
    allow_no_dp : bool
        ``[privacy] allow-no-dp``: the site also trains when a run asks for ``dp = false``
        (default ``False``: it refuses, as a deployed site does unless its operator opts in).
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
    verbose: bool = True
    allow_no_dp: bool = False


def write_site_toml(
    folder: Path, name: str, data: SiteData, *, superlink: str, pki_dir: Path | None
) -> Path:
    """Write ``FOLDER/site.toml`` with relative data and ledger paths; return its path.

    Parameters
    ----------
    folder : Path
        The site's folder (it must not exist yet); its data files are copied to
        ``FOLDER/data``, its ledger is ``FOLDER/ledger``.
    name : str
        The site's name.
    data : SiteData
        What the site holds.
    superlink : str
        The SuperLink's ``HOST:PORT``.
    pki_dir : Path, optional
        The federation's PKI (its ``ca.pem``, ``sites/NAME.key``, ``sites/NAME.secagg.key``
        and ``secagg-roster.json``); ``None`` writes ``insecure = true``.
    """
    import tomli_w

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
    connection: dict[str, str | bool | float] = {"superlink": superlink}
    if data.heartbeat_interval is not None:
        connection["heartbeat-interval"] = float(data.heartbeat_interval)
    if pki_dir is not None:
        connection["root-certificates"] = str(pki_dir / "ca.pem")
        connection["auth-private-key"] = str(pki_dir / "sites" / f"{name}.key")
        connection["secagg-identity-key"] = str(pki_dir / "sites" / f"{name}.secagg.key")
        connection["secagg-roster"] = str(pki_dir / "secagg-roster.json")
    else:
        connection["insecure"] = True
    privacy: dict[str, str | float | bool] = {
        "budget-epsilon": float(data.budget_epsilon),
        "ledger-dir": "ledger",
    }
    if data.allow_no_dp:
        privacy["allow-no-dp"] = True
    document = {"site": site, "privacy": privacy, "connection": connection}
    path = folder / "site.toml"
    path.write_text(tomli_w.dumps(document), encoding="utf-8")
    return path


def cli_supernode_argv(
    config: SiteConfig, data: SiteData, *, runtime_port: int, insecure: bool
) -> list[str]:
    """The ``fedlora deploy supernode --site-config ...`` command a site operator runs."""
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
    if insecure:
        argv.append("--insecure")
    if data.warm:
        argv += ["--poll-interval", repr(data.poll_interval)]
        if data.verbose:
            argv.append("--verbose")
    else:
        argv.append("--cold")
    return argv


class StartProcess(Protocol):
    """Starts a named process of the deployment (:meth:`LocalDeployment.start_process`)."""

    def __call__(
        self, name: str, argv: list[str], *, extra_env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[bytes]: ...


class SiteNodes:
    """The sites' SuperNodes of a loopback deployment, on ``host``.

    Parameters
    ----------
    root : Path
        The deployment's folder; site ``NAME`` lives in ``ROOT/NAME``.
    sites : Mapping[str, SiteData]
        Site name to its data.
    pki_dir : Path, optional
        The federation's PKI; ``None`` for a plaintext deployment (``insecure = true``).
    start_process : StartProcess
        Starts a node's process (with the deployment's environment).
    group : ProcessGroup
        The deployment's processes (their logs; kill and restart).
    host : str
        Where each node's Runtime API listens.

    Attributes
    ----------
    configs : dict[str, SiteConfig]
        Each started site's validated ``site.toml``.
    processes : dict[str, subprocess.Popen]
        Each site's current node process.
    """

    def __init__(
        self,
        root: Path,
        sites: Mapping[str, SiteData],
        *,
        pki_dir: Path | None,
        start_process: StartProcess,
        group: ProcessGroup,
        host: str,
    ) -> None:
        self.root, self.sites, self.pki_dir = root, dict(sites), pki_dir
        self.start_process, self.group, self.host = start_process, group, host
        self.configs: dict[str, SiteConfig] = {}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, superlink: str) -> subprocess.Popen[bytes]:
        """Write site ``name``'s folder, validate its ``site.toml`` and start its node."""
        site_toml = write_site_toml(
            self.root / name, name, self.sites[name], superlink=superlink, pki_dir=self.pki_dir
        )
        self.configs[name] = load_site_config(site_toml, allow_insecure=self.pki_dir is None)
        return self.launch(name)

    def launch(self, name: str) -> subprocess.Popen[bytes]:
        """Start site ``name``'s node from its ``site.toml`` (as :attr:`SiteData.start_with`)."""
        config, data = self.configs[name], self.sites[name]
        runtime_port = free_port(self.host)
        if data.start_with == "cli":
            argv = cli_supernode_argv(
                config, data, runtime_port=runtime_port, insecure=self.pki_dir is None
            )
            process = self.start_process(name, argv)
        else:
            check_device(config)
            argv = supernode_argv(
                config,
                runtime_port=runtime_port,
                warm=data.warm,
                poll_interval=data.poll_interval,
                verbose=data.verbose,
            )
            process = self.start_process(name, argv, extra_env=config.supernode_environment())
        self.processes[name] = process
        return process

    def kill(self, name: str) -> None:
        """SIGKILL site ``name``'s node (its SuperNode and warm worker), as a crash would."""
        process = self.processes[name]
        self.group.kill(process, timeout=30)
        logger.info("killed site %s (pid %d)", name, process.pid)

    def restart(self, name: str, timeout: float) -> subprocess.Popen[bytes]:
        """Start site ``name``'s node again until the SuperLink activates it.

        As a process supervisor would: the SuperLink refuses to activate a node whose previous
        session it still counts as online (until two heartbeats are missed), and
        ``flower-supernode`` then exits; so the node is started again every few seconds until
        it activates.

        Raises
        ------
        LoopbackError
            When the node is not back within ``timeout`` seconds.
        """
        process = self.group.restart_until(
            name, lambda: self.launch(name), ACTIVATED, timeout=timeout, what=f"site {name}"
        )
        logger.info("site %s is back (pid %d)", name, process.pid)
        return process

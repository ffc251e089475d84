"""A site's side of a deployment: the SuperNode command line of a validated ``site.toml``.

By default the node is Flower's SuperNode in a fedlora process with short polls and fedlora's
warm worker (:mod:`fedlora.flower_internals.node_supernode`); ``warm=False`` (``--cold``) is
plain ``flower-supernode``.
"""

from __future__ import annotations

import sys

from fedlora.deploy.host import check_port, flower_executable, free_port, port_is_free
from fedlora.deploy.site_config import SiteConfig
from fedlora.errors import ConfigError
from fedlora.flower_internals.tuning import DEFAULT_POLL_INTERVAL_S, check_poll_interval

__all__ = ["DEFAULT_RUNTIME_PORT", "check_device", "supernode_argv"]

DEFAULT_RUNTIME_PORT = 9094
"""``flower-supernode``'s default local Runtime API port; a second node on a host needs another."""


def supernode_argv(
    config: SiteConfig,
    *,
    runtime_port: int | None = None,
    runtime_host: str = "127.0.0.1",
    warm: bool = True,
    poll_interval: float = DEFAULT_POLL_INTERVAL_S,
    verbose: bool = False,
) -> list[str]:
    """The command line of a validated site's SuperNode.

    Parameters
    ----------
    config : SiteConfig
        From :func:`fedlora.deploy.site_config.load_site_config`.
    runtime_port : int, optional
        The node's local Runtime API port (its ClientApp processes talk to it). Default: 9094,
        or a free port when 9094 is taken (a second node on the same host); a warm node
        chooses it itself under a host-wide lock held until it listens
        (:mod:`fedlora.flower_internals.node_ports`), so nodes started together never share
        it. A port given here is used as it is.
    runtime_host : str
        Where the Runtime API listens; keep it on loopback.
    warm : bool
        ``True`` (default): Flower's SuperNode with short polls and fedlora's warm worker
        (:mod:`fedlora.flower_internals.node_supernode`); ``False``: plain ``flower-supernode``, a
        fresh
        ``flwr-clientapp`` process per message (it runs whatever app a run submits).
    poll_interval : float
        The warm node's longest wait between pulls, in seconds.
    verbose : bool
        A warm node logs every request and Flower's DEBUG lines (default: its own lines and
        Flower's INFO lines, each once: :mod:`fedlora.quiet`).

    Raises
    ------
    ConfigError
        For a bad port or poll interval, or ``heartbeat-interval`` with ``warm=False``.
    """
    chosen = runtime_port is None
    if runtime_port is None:
        runtime_port = DEFAULT_RUNTIME_PORT
    check_port(runtime_port, "runtime port")
    if warm:
        check_poll_interval(poll_interval)
        argv = [sys.executable, "-m", "fedlora.flower_internals.node_supernode"]
        argv += ["--poll-interval", repr(poll_interval)]
        if config.heartbeat_interval is not None:
            argv += ["--heartbeat-interval", repr(config.heartbeat_interval)]
        if chosen:
            argv.append("--free-runtime-port")
        if verbose:
            argv.append("--verbose")
        argv += ["--worker", "--"]
    elif config.heartbeat_interval is not None:
        raise ConfigError(
            f"{config.source}: [connection] heartbeat-interval needs fedlora's node; plain "
            "flower-supernode (--cold) always uses Flower's 30 s: remove one of them"
        )
    else:
        if chosen and not port_is_free(runtime_host, runtime_port):
            # plain flower-supernode binds what it is given: checked here, not locked
            runtime_port = free_port(runtime_host)
        argv = [flower_executable("flower-supernode")]
    argv += ["--superlink", config.superlink]
    if config.insecure:
        argv.append("--insecure")
    else:
        argv += ["--root-certificates", str(config.root_certificates)]
    if config.auth_private_key is not None:
        argv += ["--auth-supernode-private-key", str(config.auth_private_key)]
    argv += ["--node-config", config.to_node_config()]
    argv += ["--host", runtime_host, "--port", str(runtime_port)]
    # the warm worker takes the place of Flower's executor (the node would add it itself;
    # written out so that the printed command is the one that runs)
    return [*argv, "--isolation", "process"] if warm else argv


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

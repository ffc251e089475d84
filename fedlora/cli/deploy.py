"""``fedlora deploy``: print and run the Flower commands of a real deployment."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from fedlora.flower_internals.tuning import DEFAULT_POLL_INTERVAL_S

_VERBOSE = "log Flower's DEBUG lines and every HTTP request (default: INFO, each line once)"


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``deploy`` and its steps to the ``fedlora`` parser."""
    from fedlora.deploy.commands import DEFAULT_PORT
    from fedlora.flower_internals.link_hold import DEFAULT_HOLD_S

    deploy = commands.add_parser(
        "deploy",
        help="run a real federation: SuperLink, site SuperNodes, runs (docs/deployment.md)",
        description=(
            "Print and run the Flower commands of a real deployment. superlink and supernode "
            "replace this process with the Flower command (foreground, for systemd)."
        ),
    )
    steps = deploy.add_subparsers(dest="deploy_command", required=True)
    superlink = steps.add_parser(
        "superlink",
        help="start the SuperLink (TLS + SuperNode authentication)",
        description="Start flower-superlink with the PKI's TLS files and SuperNode auth.",
    )
    superlink.add_argument("--pki", required=True, metavar="DIR", help="the PKI directory")
    superlink.add_argument("--host", default="127.0.0.1", help="listen address")
    superlink.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"listen port (default: {DEFAULT_PORT})"
    )
    superlink.add_argument(
        "--database", metavar="FILE", help="SQLite state file (default: in memory, lost on exit)"
    )
    superlink.add_argument(
        "--insecure", action="store_true", help="plaintext, no SuperNode auth (test networks only)"
    )
    superlink.add_argument(
        "--roster", metavar="FILE", help="site roster (default: DIR/roster.json)"
    )
    superlink.add_argument("--verbose", action="store_true", help=_VERBOSE)
    superlink.add_argument(
        "--pull-hold",
        type=float,
        default=DEFAULT_HOLD_S,
        metavar="S",
        help=(
            "hold a pull that finds no message up to S seconds, answering it when one comes "
            f"(default: {DEFAULT_HOLD_S:g}; 0: answer at once, as Flower does)"
        ),
    )
    connection = steps.add_parser(
        "connection",
        help="write the flwr CLI's SuperLink connection ($FLWR_HOME/config.toml)",
        description="Add or update [superlink.NAME] in $FLWR_HOME/config.toml (default ~/.flwr).",
    )
    connection.add_argument("name", metavar="NAME", help="connection name")
    connection.add_argument("--address", required=True, metavar="HOST:PORT")
    connection.add_argument("--pki", metavar="DIR", help="folder with the federation's ca.pem")
    connection.add_argument("--insecure", action="store_true", help="plaintext connection")
    connection.add_argument("--default", action="store_true", help="make it the default")
    register = steps.add_parser(
        "register",
        help="register a site's public key with the SuperLink",
        description="Run flwr supernode register DIR/sites/SITE.pub CONNECTION --name SITE.",
    )
    register.add_argument("site", metavar="SITE", help="site name")
    register.add_argument("--pki", required=True, metavar="DIR", help="the PKI directory")
    register.add_argument("--connection", required=True, metavar="NAME")
    register.add_argument("--roster", metavar="FILE", help="site roster (default: DIR/roster.json)")
    supernode = steps.add_parser(
        "supernode",
        help="validate a site.toml and start the site's SuperNode",
        description="Validate site.toml, then start flower-supernode with its node config.",
    )
    supernode.add_argument("--site-config", required=True, metavar="FILE", help="site.toml")
    supernode.add_argument(
        "--runtime-port",
        type=int,
        metavar="N",
        help="local Runtime API port (default: 9094, or a free one when taken)",
    )
    supernode.add_argument(
        "--insecure", action="store_true", help="accept insecure = true in site.toml"
    )
    supernode.add_argument(
        "--cold",
        action="store_true",
        help="plain flower-supernode: a fresh ClientApp process per message, Flower's 3 s "
        "idle polls (runs any submitted app); default: short polls and a warm fedlora worker",
    )
    supernode.add_argument(
        "--poll-interval",
        type=float,
        default=DEFAULT_POLL_INTERVAL_S,
        metavar="S",
        help=f"longest wait between the warm node's pulls (default {DEFAULT_POLL_INTERVAL_S})",
    )
    supernode.add_argument(
        "--check", action="store_true", help="validate and print the command; do not start it"
    )
    supernode.add_argument("--verbose", action="store_true", help=_VERBOSE)
    submit = steps.add_parser(
        "submit",
        help="submit a run to the SuperLink and follow it round by round",
        description=(
            "Submit the installed fedlora (or --app DIR) with flwr run APP CONNECTION --stream; "
            "show the run's rounds, then its run directory and how to fetch it. Exit 0 when "
            "the run completed, 2 when fedlora refused or stopped it."
        ),
    )
    submit.add_argument("--connection", required=True, metavar="NAME")
    submit.add_argument(
        "--app",
        metavar="DIR",
        help="another Flower App folder (default: the installed fedlora, from any folder)",
    )
    submit.add_argument(
        "--run-config",
        metavar="PAIRS",
        help="e.g. \"rounds=3 sites=2 out='/srv/fedlora/runs'\" (out: absolute, SuperLink host)",
    )
    submit.add_argument("--verbose", action="store_true", help="show all of Flower's output")
    sites = steps.add_parser(
        "sites",
        help="list the enrolled sites: node id, online / offline, since when",
        description=(
            "Join the roster that fedlora deploy register writes with the SuperLink's node list "
            "(flwr supernode list CONNECTION)."
        ),
    )
    sites.add_argument("--pki", metavar="DIR", help="the PKI directory (its roster.json)")
    sites.add_argument("--roster", metavar="FILE", help="site roster (default: DIR/roster.json)")
    sites.add_argument("--connection", required=True, metavar="NAME")
    fetch = steps.add_parser(
        "fetch",
        help="copy a finished run directory here and write its privacy report",
        description="Copy RUN_DIR (on the SuperLink host) into --to and write its report.",
    )
    fetch.add_argument("--run-dir", required=True, metavar="DIR")
    fetch.add_argument("--to", default="runs", metavar="DIR", help="local runs folder")
    fetch.add_argument("--force", action="store_true", help="replace an earlier copy")


def _run_in_foreground(argv: list[str], extra_env: dict[str, str] | None = None) -> NoReturn:
    """Print the command, then replace this process with it (signals reach Flower directly)."""
    import os

    from fedlora.deploy.commands import command_line, flower_environment

    env = flower_environment()
    env.update(extra_env or {})
    prefix = " ".join(f"{key}={value!r}" for key, value in (extra_env or {}).items())
    print(f"+ {prefix + ' ' if prefix else ''}{command_line(argv)}", flush=True)
    sys.stderr.flush()
    os.execve(argv[0], argv, env)


def _list_sites(args: argparse.Namespace) -> int:
    from fedlora.deploy.roster import default_roster_path, load_roster
    from fedlora.deploy.site_list import format_rows, site_rows, superlink_nodes
    from fedlora.errors import ConfigError

    if args.roster is None and args.pki is None:
        raise ConfigError("give --pki DIR (its roster.json) or --roster FILE")
    roster = load_roster(args.roster or default_roster_path(args.pki))
    for line in format_rows(site_rows(roster, superlink_nodes(args.connection))):
        print(line)
    return 0


def run(args: argparse.Namespace) -> int:
    """``fedlora deploy ...``: print and run the Flower commands of a real deployment."""
    from fedlora.deploy import commands as deploy

    command = args.deploy_command
    if command == "superlink":
        argv = deploy.superlink_argv(
            args.pki,
            host=args.host,
            port=args.port,
            insecure=args.insecure,
            database=args.database,
            pull_hold=args.pull_hold,
            roster=args.roster,
            verbose=args.verbose,
        )
        if args.insecure:
            print(deploy.INSECURE_WARNING, file=sys.stderr)
        return _run_in_foreground(argv)
    if command == "connection":
        path = deploy.write_connection(
            args.name,
            args.address,
            pki_dir=args.pki,
            insecure=args.insecure,
            make_default=args.default,
        )
        print(f"SuperLink connection {args.name!r} ({args.address}) written to {path}")
        return 0
    if command == "register":
        argv = deploy.register_argv(args.site, args.pki, args.connection)
        print(f"+ {deploy.command_line(argv)} --format json", flush=True)
        entry = deploy.register_site(args.site, args.pki, args.connection, roster=args.roster)
        print(f"site {entry.site} registered as node {entry.node_id} ({entry.key_sha256})")
        return 0
    if command == "supernode":
        from fedlora.deploy.site_config import load_site_config

        site = load_site_config(args.site_config, allow_insecure=args.insecure)
        deploy.check_device(site)
        if site.insecure:
            print(
                "fedlora: WARNING: insecure = true: this SuperNode talks to the SuperLink "
                "WITHOUT TLS; its adapters and privacy spend travel unencrypted",
                file=sys.stderr,
            )
        argv = deploy.supernode_argv(
            site,
            runtime_port=args.runtime_port,
            warm=not args.cold,
            poll_interval=args.poll_interval,
            verbose=args.verbose,
        )
        if args.check:
            print(f"site config {site.source} is valid; the SuperNode command is:")
            print(deploy.command_line(argv))
            return 0
        return _run_in_foreground(argv, site.supernode_environment())
    if command == "submit":
        from fedlora.deploy.submit import submit_run

        submitted = submit_run(
            args.connection, app_dir=args.app, run_config=args.run_config, verbose=args.verbose
        )
        return submitted.exit_code
    if command == "sites":
        return _list_sites(args)
    fetched = deploy.fetch_run(args.run_dir, args.to, force=args.force)
    print(f"run directory: {fetched.path} (state: {fetched.state})")
    print(f"privacy report: {fetched.report}")
    return 0

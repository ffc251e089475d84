"""Accounting cost, old (Opacus called directly) against new (fedlora's exact fast path).

Same inputs, same outputs (the script checks σ and every ε are equal), one process, each
figure the median of ``--repeat`` runs; the new path's memos are cleared before each run so
the figures are a cold site's. Wall and CPU (process) time both: the CPU time is the fairer
figure on a shared machine.

    python bench/accounting.py [--repeat 3] [--rounds 5]
"""

# ruff: noqa: B023 (each lambda is timed at once, in its own loop turn)
from __future__ import annotations

import argparse
import statistics
import time
import warnings

from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.utils import get_noise_multiplier

from fedlora.privacy import accounting, sgm_rdp
from fedlora.privacy.accounting import CALIBRATION_TOLERANCE, Release

# (name, q, steps per round, rounds planned, δ, target ε): the in-process tiny run's site, and
# a laptop-sized site (1000 records, batch 16, 63 steps a round).
SITES = [("tiny", 0.13, 12, 2, 1e-3, 4.0), ("laptop", 0.016, 63, 3, 1e-4, 4.0)]


def clear_memos() -> None:
    sgm_rdp.rdp_per_step.cache_clear()
    accounting._history_epsilon.cache_clear()
    accounting._calibrated.cache_clear()


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    value = fn()
    return value, time.perf_counter() - wall, time.process_time() - cpu


def median_run(fn, repeat, before=None):
    runs = []
    for _ in range(repeat):
        if before:
            before()
        runs.append(timed(fn))
    return runs[0][0], statistics.median(r[1] for r in runs), statistics.median(r[2] for r in runs)


def opacus_epsilon(history, delta, accountant):
    acc = PRVAccountant() if accountant == "prv" else RDPAccountant()
    acc.history = list(history)
    return float(acc.get_epsilon(delta=delta))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5, help="rounds of lifetime ε per site")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="Optimal order")
    print(f"{'what':44} {'old wall':>9} {'new wall':>9} {'old cpu':>8} {'new cpu':>8}  equal")
    for name, q, steps, rounds, delta, target in SITES:
        for acc in ("prv", "rdp"):
            total = steps * rounds
            old, ow, oc = median_run(
                lambda: get_noise_multiplier(
                    target_epsilon=target,
                    target_delta=delta,
                    sample_rate=q,
                    steps=total,
                    accountant=acc,
                    epsilon_tolerance=CALIBRATION_TOLERANCE,
                ),
                args.repeat,
            )
            new, nw, nc = median_run(
                lambda: accounting.calibrate_noise(
                    target_epsilon=target, delta=delta, sample_rate=q, steps=total, accountant=acc
                ),
                args.repeat,
                before=clear_memos,
            )
            label = f"{name} σ calibration ({acc}, {total} steps)"
            print(f"{label:44} {ow:9.3f} {nw:9.3f} {oc:8.3f} {nc:8.3f}  {old == new}")
            # Sites with the same (q, steps) share one calibration.
            _, w, c = timed(
                lambda: accounting.calibrate_noise(
                    target_epsilon=target, delta=delta, sample_rate=q, steps=total, accountant=acc
                )
            )
            label = f"{name} σ calibration, next equal site ({acc})"
            print(f"{label:44} {'':9} {w:9.4f} {'':8} {c:8.4f}")
            sigma = new
            # Lifetime ε after each round, as a site reports it; the new path keeps its memo
            # across rounds as a site process does.
            clear_memos()
            walls = {"old": [], "new": []}
            cpus = {"old": [], "new": []}
            same = True
            for r in range(1, args.rounds + 1):
                releases = [Release(sigma, q, steps)] * r
                a, w, c = timed(lambda: opacus_epsilon([(sigma, q, r * steps)], delta, acc))
                walls["old"].append(w)
                cpus["old"].append(c)
                b, w, c = timed(lambda: accounting.epsilon(releases, delta=delta, accountant=acc))
                walls["new"].append(w)
                cpus["new"].append(c)
                same = same and a == b
            label = f"{name} lifetime ε per round ({acc}, mean of {args.rounds})"
            row = [statistics.mean(v) for v in (walls["old"], walls["new"], cpus["old"])]
            print(f"{label:44} {row[0]:9.3f} {row[1]:9.3f} {row[2]:8.3f} "
                  f"{statistics.mean(cpus['new']):8.3f}  {same}")  # fmt: skip


if __name__ == "__main__":
    main()

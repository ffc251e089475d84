"""A real deployment runs secure aggregation with the keys and roster ``fedlora pki`` issued.

Two runs on the same loopback federation (TLS, registered SuperNodes, each site's
``site.toml`` naming its identity key and the CA-signed ``secagg-roster.json``), one in clear
and one with ``secure-aggregation = true``, both without DP so that they train on the same
numbers (DP noise is drawn afresh by design; these sites opt in with ``allow-no-dp``): their
adapters then differ only by the quantisation.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from safetensors.torch import load_file

from fedlora.deploy.loopback import LocalDeployment, SiteData
from fedlora.secagg import Quantiser
from fedlora.testing import write_sft_file

pytestmark = pytest.mark.deployment

ROOT = Path(__file__).resolve().parents[2]
SITES = ("site-a", "site-b")
RUN_TIMEOUT = 300
RANGE = 8.0
RUN = {
    "rounds": 1,
    "sites": 2,
    "model": "tiny-llama",
    "task": "sft",
    "dp": False,
    "max-length": 48,
    "batch-size": 8,
}


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalDeployment]:
    data = tmp_path_factory.mktemp("site-data")
    sites = {
        name: SiteData(
            train_file=write_sft_file(data / name / "train.jsonl", name, 16),
            test_file=write_sft_file(data / name / "test.jsonl", name, count=4),
            allow_no_dp=True,
            cpu_threads=1,
        )
        for name in SITES
    }
    with LocalDeployment(
        tmp_path_factory.mktemp("deployment"), sites, app_dir=ROOT, connection="secure"
    ) as deployment:
        yield deployment


def _final(run_dir: Path) -> dict:
    assert json.loads((run_dir / "status.json").read_text())["state"] == "complete"
    return load_file(str(run_dir / "adapters" / "final" / "adapter_model.safetensors"))


def test_a_secure_deployed_run_gives_the_plain_runs_adapter_up_to_quantisation(
    federation: LocalDeployment,
) -> None:
    plain = _final(federation.submit(RUN, timeout=RUN_TIMEOUT))
    secure_dir = federation.submit(
        {**RUN, "secure-aggregation": True, "secure-aggregation-range": RANGE},
        timeout=RUN_TIMEOUT,
    )
    secure = _final(secure_dir)

    # One round from the same start: each value of the mean is within the quantisation bound
    # of 2 sites of summed weight 1 (fedlora/secagg/quantise.py), plus the float32 cast.
    bound = Quantiser(RANGE).error_bound(len(SITES), 1.0)
    assert plain.keys() == secure.keys()
    for name, tensor in plain.items():
        cast = 1.2e-7 * float(tensor.abs().max())
        assert float((tensor - secure[name]).abs().max()) <= bound + cast, name
    assert any(not plain[name].equal(secure[name]) for name in plain)  # it was quantised

    [record] = [
        json.loads(line)
        for line in (secure_dir / "metrics.jsonl").read_text().splitlines()
        if json.loads(line)["round"] == 1
    ]
    entry = record["secure-aggregation"]
    assert entry["masked"] == 2 and entry["dropped"] == 0 and entry["aggregated"]
    # Each site signed with its pki-issued key and checked its peer against the CA's roster.
    for name in SITES:
        assert (
            f"site {name}: secure-aggregation keys checked against a roster of 2 sites signed "
            "by the federation CA"
        ) in federation.log(name)

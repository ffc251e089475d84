#!/usr/bin/env bash
# docs/deployment.md followed literally, from an empty folder, with an INSTALLED fedlora (no
# checkout on the path): PKI, SuperLink with a --database in a folder that does not exist,
# connection, two registered sites, both SuperNodes started at the same moment (no
# --runtime-port), fedlora deploy sites, a submit with secure aggregation (the sites' keys and
# roster from fedlora pki), fetch. Not collected by pytest (minutes).
#
#   pip wheel --no-deps --no-build-isolation -w /tmp/dist . && \
#   pip install --no-deps --target /tmp/fedlora-installed /tmp/dist/fedlora-*.whl && \
#   FEDLORA_INSTALLED=/tmp/fedlora-installed bash tests/deployment/docs_walkthrough.sh /tmp/walk
set -u
: "${FEDLORA_INSTALLED:?the folder pip install --target wrote fedlora into}"
WORK=${1:?an empty folder to work in}
export PYTHONPATH=$FEDLORA_INSTALLED
rm -rf "$WORK" && mkdir -p "$WORK" && cd "$WORK" || exit 1
export FLWR_HOME=$PWD/.flwr FEDLORA_HOME=$PWD/.fedlora-home
python -c "import fedlora; print('fedlora from', fedlora.__file__)"
P=$(python -c "from fedlora.deploy.host import free_port; print(free_port())")
fedlora pki init --dir pki
fedlora pki server --dir pki --dns localhost --ip 127.0.0.1
for s in hospital-a hospital-b; do fedlora pki site $s --dir pki --connection fed --superlink 127.0.0.1:$P; done
setsid fedlora deploy superlink --pki pki --host 127.0.0.1 --port $P --database $PWD/state/superlink.db > superlink.log 2>&1 &
echo $! > superlink.pid
for _ in $(seq 60); do python -c "from fedlora.deploy.host import serves; import sys; sys.exit(0 if serves('127.0.0.1',$P) else 1)" && break; sleep 1; done
ls -ld state
fedlora deploy connection fed --address 127.0.0.1:$P --pki pki
for s in hospital-a hospital-b; do fedlora deploy register $s --pki pki --connection fed; done
for s in hospital-a hospital-b; do
  mkdir -p $s/data
  python -c "from fedlora.testing import write_sft_file; write_sft_file('$s/data/train.jsonl','$s',24); write_sft_file('$s/data/test.jsonl','$s',8)"
  cat > $s/site.toml <<TOML
[site]
name = "$s"
train-file = "data/train.jsonl"
test-file = "data/test.jsonl"
device = "cpu"
cpu-threads = 1
[privacy]
budget-epsilon = 8.0
ledger-dir = "ledger"
[connection]
superlink = "127.0.0.1:$P"
root-certificates = "$PWD/pki/ca.pem"
auth-private-key = "$PWD/pki/sites/$s.key"
secagg-identity-key = "$PWD/pki/sites/$s.secagg.key"
secagg-roster = "$PWD/pki/secagg-roster.json"
TOML
done
for s in hospital-a hospital-b; do setsid fedlora deploy supernode --site-config $s/site.toml > $s.log 2>&1 & echo $! > $s.pid; done
for _ in $(seq 120); do [ "$(grep -l "SuperNode ID" hospital-*.log 2>/dev/null | wc -l)" = 2 ] && break; sleep 1; done
fedlora deploy sites --pki pki --connection fed
fedlora deploy submit --connection fed --run-config "rounds=2 sites=2 task='sft' model='tiny-llama' out='$PWD/server-runs' noise-multiplier=1.0 max-length=48 batch-size=8 secure-aggregation=true"
echo "submit exit: $?"
RUN=$(ls -d "$PWD"/server-runs/*/ | head -1)
fedlora deploy fetch --run-dir "$RUN" --to runs
echo "fetch exit: $?"
grep -o "Uvicorn running on http://127.0.0.1:[0-9]*" hospital-*.log
wc -l superlink.log hospital-a.log hospital-b.log
for f in superlink hospital-a hospital-b; do kill -- -"$(cat $f.pid)" 2>/dev/null; done

"""The site privacy ledger: round trip, hash chain, tamper detection, data fingerprint."""

import hashlib
import itertools
import json
import math
from pathlib import Path

import pytest

from fedlora.errors import LedgerError
from fedlora.privacy.accounting import Release
from fedlora.privacy.ledger import GENESIS, SiteLedger, read_ledger
from fedlora.privacy.ledger_entry import LedgerEntry
from fedlora.privacy.ledger_storage import LEDGER_FILE, data_fingerprint

FP_A = hashlib.sha256(b"dataset A").hexdigest()
FP_B = hashlib.sha256(b"dataset B").hexdigest()


def entry(run_id: str, round_: int, **changes) -> LedgerEntry:
    fields = {
        "run_id": run_id,
        "round": round_,
        "steps": 10 * round_,
        "sample_rate": 0.05,
        "noise_multiplier": 1.1,
        "max_grad_norm": 1.0,
        "delta": 1e-5,
        "accountant": "prv",
        "epsilon_prv": 0.75 * round_,
        "epsilon_rdp": 0.875 * round_,
        "time": f"2026-01-01T00:00:0{round_}.000+00:00",
    }
    fields.update(changes)
    return LedgerEntry(**fields)


ENTRIES = [entry("run-a", 1), entry("run-a", 2), entry("run-b", 1, noise_multiplier=2.0)]


def open_ledger(directory: Path, fingerprint: str = FP_A, **kwargs) -> SiteLedger:
    return SiteLedger.open(
        directory, site="site-0", data_fingerprint=fingerprint, records=400, **kwargs
    )


def written_ledger(directory: Path) -> SiteLedger:
    """A ledger with its 'open' line (line 1) and the three ENTRIES (lines 2 to 4)."""
    ledger = open_ledger(directory)
    for item in ENTRIES:
        ledger.append(item)
    return ledger


def lines_of(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines(keepends=True)


def assert_refused(directory: Path, pattern: str) -> None:
    """Both the training path (open) and the reporting path (read_ledger) refuse the file."""
    with pytest.raises(LedgerError, match=pattern):
        open_ledger(directory)
    with pytest.raises(LedgerError, match=pattern):
        read_ledger(directory)


# --- round trip -------------------------------------------------------------------------------


def test_new_ledger_holds_only_its_open_line(tmp_path: Path):
    ledger = open_ledger(tmp_path / "ledger")
    path = tmp_path / "ledger" / LEDGER_FILE
    assert ledger.path == path
    assert ledger.entries == []
    assert ledger.releases() == []

    (line,) = lines_of(path)
    payload = json.loads(line)
    assert payload["kind"] == "open"
    assert payload["site"] == "site-0"
    assert payload["data-fingerprint"] == FP_A
    assert payload["records"] == 400
    assert payload["prev"] == GENESIS
    assert ledger.head == payload["hash"]


def test_round_trip(tmp_path: Path):
    ledger = written_ledger(tmp_path)
    head = ledger.head
    content = (tmp_path / LEDGER_FILE).read_bytes()

    reopened = open_ledger(tmp_path)
    read = read_ledger(tmp_path / LEDGER_FILE)
    for loaded in (reopened, read):
        assert loaded.entries == ENTRIES
        assert loaded.head == head
        assert (loaded.site, loaded.data_fingerprint, loaded.records) == ("site-0", FP_A, 400)
    # Reopening validates; it writes nothing.
    assert (tmp_path / LEDGER_FILE).read_bytes() == content
    assert read_ledger(tmp_path).entries == ENTRIES  # a directory works too

    assert reopened.releases() == [
        Release(1.1, 0.05, 10),
        Release(1.1, 0.05, 20),
        Release(2.0, 0.05, 10),
    ]
    assert reopened.releases("run-a") == [Release(1.1, 0.05, 10), Release(1.1, 0.05, 20)]
    assert reopened.releases("run-b") == [Release(2.0, 0.05, 10)]
    assert reopened.releases("run-c") == []
    assert reopened.rounds_of("run-a") == [1, 2]


def test_appending_after_reopen_extends_the_chain(tmp_path: Path):
    written_ledger(tmp_path)
    reopened = open_ledger(tmp_path)
    extra = entry("run-b", 2)
    reopened.append(extra)
    assert read_ledger(tmp_path).entries == [*ENTRIES, extra]
    assert read_ledger(tmp_path).head == reopened.head


def test_hash_chain_follows_the_documented_format(tmp_path: Path):
    written_ledger(tmp_path)
    previous = GENESIS
    for line in lines_of(tmp_path / LEDGER_FILE):
        payload = json.loads(line)
        body = {key: value for key, value in payload.items() if key != "hash"}
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
        assert payload["prev"] == previous
        assert payload["hash"] == hashlib.sha256(canonical.encode()).hexdigest()
        previous = payload["hash"]
    assert read_ledger(tmp_path).head == previous


def test_missing_ledger_is_reported(tmp_path: Path):
    with pytest.raises(LedgerError, match="no privacy ledger"):
        read_ledger(tmp_path)


# --- tamper detection -------------------------------------------------------------------------


def test_edited_number_names_its_line(tmp_path: Path):
    written_ledger(tmp_path)
    path = tmp_path / LEDGER_FILE
    lines = lines_of(path)
    # Line 3 is run-a round 2, whose PRV ε is 1.5: pretend it spent less.
    assert '"epsilon-prv":1.5,' in lines[2]
    lines[2] = lines[2].replace('"epsilon-prv":1.5,', '"epsilon-prv":0.5,')
    path.write_text("".join(lines), encoding="utf-8")
    assert_refused(tmp_path, r"line 3 was altered, removed or reordered")


def test_deleted_line_breaks_the_chain_where_it_was(tmp_path: Path):
    written_ledger(tmp_path)
    path = tmp_path / LEDGER_FILE
    lines = lines_of(path)
    # Removing line 2: the old line 3, now line 2 of the file, no longer follows line 1.
    path.write_text("".join([lines[0], *lines[2:]]), encoding="utf-8")
    assert_refused(tmp_path, r"line 2 was altered")

    # Removing line 3: the old line 4, now line 3, no longer follows line 2.
    path.write_text("".join([*lines[:2], lines[3]]), encoding="utf-8")
    assert_refused(tmp_path, r"line 3 was altered")


def test_swapped_lines_are_refused(tmp_path: Path):
    written_ledger(tmp_path)
    path = tmp_path / LEDGER_FILE
    lines = lines_of(path)
    lines[2], lines[3] = lines[3], lines[2]
    path.write_text("".join(lines), encoding="utf-8")
    assert_refused(tmp_path, r"line 3 was altered")


def test_removed_tail_is_refused_by_the_high_water_mark(tmp_path: Path):
    # A hash chain cannot tell a removed tail from a shorter history: the mark beside it can.
    written_ledger(tmp_path)
    path = tmp_path / LEDGER_FILE
    path.write_text("".join(lines_of(path)[:-1]), encoding="utf-8")
    assert_refused(tmp_path, r"has 3 lines but its high-water mark records 4")


def test_removed_tail_and_mark_are_visible_only_through_head(tmp_path: Path):
    # Whoever controls the disk can remove both: then only a remembered head shows it.
    head = written_ledger(tmp_path).head
    path = tmp_path / LEDGER_FILE
    path.write_text("".join(lines_of(path)[:-1]), encoding="utf-8")
    for mark in tmp_path.glob("privacy-ledger.high-water-*.json"):
        mark.unlink()
    shortened = read_ledger(tmp_path)
    assert shortened.entries == ENTRIES[:2]
    assert shortened.head != head


def test_truncated_last_line_is_corrupted(tmp_path: Path):
    # A crash in the middle of an append leaves half a line and no newline.
    written_ledger(tmp_path)
    path = tmp_path / LEDGER_FILE
    content = path.read_bytes()
    last_start = content.rstrip(b"\n").rfind(b"\n") + 1
    cut = last_start + (len(content) - last_start) // 2
    path.write_bytes(content[:cut])
    assert_refused(tmp_path, r"line 4 is corrupted: not JSON")


@pytest.mark.parametrize(
    ("garbage", "reason"),
    [("this is not json", "not JSON"), ("[1, 2, 3]", "not a JSON object")],
)
def test_garbage_line_is_corrupted(tmp_path: Path, garbage: str, reason: str):
    written_ledger(tmp_path)
    path = tmp_path / LEDGER_FILE
    lines = lines_of(path)
    lines.insert(2, garbage + "\n")
    path.write_text("".join(lines), encoding="utf-8")
    assert_refused(tmp_path, rf"line 3 is corrupted: {reason}")


def test_empty_file_is_refused(tmp_path: Path):
    (tmp_path / LEDGER_FILE).write_bytes(b"")
    assert_refused(tmp_path, r"is empty")


# --- data fingerprint -------------------------------------------------------------------------


def test_ledger_of_other_data_is_refused(tmp_path: Path):
    written_ledger(tmp_path)
    content = (tmp_path / LEDGER_FILE).read_bytes()
    with pytest.raises(LedgerError, match="new-ledger"):
        open_ledger(tmp_path, FP_B)
    assert (tmp_path / LEDGER_FILE).read_bytes() == content
    assert sorted(p.name for p in tmp_path.glob("*.jsonl")) == [LEDGER_FILE]


def test_start_new_retires_the_old_ledger(tmp_path: Path):
    written_ledger(tmp_path)
    content = (tmp_path / LEDGER_FILE).read_bytes()

    fresh = open_ledger(tmp_path, FP_B, start_new=True)
    assert fresh.entries == []
    assert fresh.data_fingerprint == FP_B
    (line,) = lines_of(tmp_path / LEDGER_FILE)
    assert json.loads(line)["data-fingerprint"] == FP_B
    assert json.loads(line)["prev"] == GENESIS

    retired = tmp_path / f"privacy-ledger.retired-{FP_A}.jsonl"
    assert sorted(p.name for p in tmp_path.glob("*.jsonl")) == sorted([LEDGER_FILE, retired.name])
    assert retired.read_bytes() == content
    assert read_ledger(retired).entries == ENTRIES


def test_switching_back_to_earlier_data_continues_its_history(tmp_path: Path):
    written_ledger(tmp_path)  # data A, three rounds
    b = open_ledger(tmp_path, FP_B, start_new=True)
    b.append(entry("run-c", 1))
    b_content = (tmp_path / LEDGER_FILE).read_bytes()

    again_a = open_ledger(tmp_path, FP_A, start_new=True)
    assert again_a.entries == ENTRIES  # a new ledger never resets A's spend
    again_a.append(entry("run-d", 1))

    again_b = open_ledger(tmp_path, FP_B, start_new=True)  # nothing retired is overwritten
    assert again_b.entries == [entry("run-c", 1)]
    assert (tmp_path / LEDGER_FILE).read_bytes() == b_content
    assert read_ledger(tmp_path / f"privacy-ledger.retired-{FP_A}.jsonl").entries == [
        *ENTRIES,
        entry("run-d", 1),
    ]


def test_start_new_keeps_a_ledger_of_the_same_data(tmp_path: Path):
    head = written_ledger(tmp_path).head
    same = open_ledger(tmp_path, start_new=True)
    assert same.entries == ENTRIES
    assert same.head == head
    assert sorted(p.name for p in tmp_path.glob("*.jsonl")) == [LEDGER_FILE]


def test_data_fingerprint_is_sha256_of_the_bytes(tmp_path: Path):
    # Larger than the 1 MiB read block, and not a multiple of it.
    data = bytes(range(256)) * 9_000 + b"tail"
    path = tmp_path / "train.jsonl"
    path.write_bytes(data)
    assert data_fingerprint(path) == hashlib.sha256(data).hexdigest()

    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    assert data_fingerprint(empty) == hashlib.sha256(b"").hexdigest()


# --- stored values ----------------------------------------------------------------------------


def test_infinite_epsilon_is_stored_as_null(tmp_path: Path):
    ledger = open_ledger(tmp_path)
    no_privacy = entry("run-a", 1, noise_multiplier=0.0, epsilon_prv=math.inf, epsilon_rdp=math.inf)
    ledger.append(no_privacy)

    payload = json.loads(lines_of(tmp_path / LEDGER_FILE)[1])
    assert payload["epsilon-prv"] is None
    assert payload["epsilon-rdp"] is None

    (loaded,) = read_ledger(tmp_path).entries
    assert loaded.epsilon_prv == math.inf
    assert loaded.epsilon_rdp == math.inf
    assert loaded == no_privacy


def test_file_is_append_only(tmp_path: Path):
    path = tmp_path / LEDGER_FILE
    ledger = open_ledger(tmp_path)
    snapshots = [path.read_bytes()]
    for item in ENTRIES:
        ledger.append(item)
        snapshots.append(path.read_bytes())
    open_ledger(tmp_path).append(entry("run-c", 1))
    snapshots.append(path.read_bytes())

    for before, after in itertools.pairwise(snapshots):
        assert after.startswith(before)
        assert len(after) > len(before)
        assert after.endswith(b"\n")
        assert after[len(before) :].count(b"\n") == 1  # one whole line per append

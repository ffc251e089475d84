"""The coordinator's receipts: a site whose ledger came back shorter is refused (issue 14.10)."""

from fedlora.server.site_receipts import SiteReceipts


def privacy(lines: int, head: str = "h", fingerprint: str = "fp") -> dict[str, object]:
    return {"ledger-lines": lines, "ledger-head": head * 12, "data-fingerprint": fingerprint}


def test_a_growing_ledger_passes_and_a_shrunk_one_is_refused():
    receipts = SiteReceipts()
    assert receipts.check("a", privacy(2), 1) is None
    assert receipts.check("a", privacy(3), 2) is None

    reason = receipts.check("a", privacy(2, "r"), 3)

    assert reason is not None and "has 2 lines" in reason and "after round 2 it had 3" in reason


def test_receipts_are_per_site_and_data_and_skip_replies_without_one():
    receipts = SiteReceipts()
    receipts.check("a", privacy(5), 1)
    assert receipts.check("b", privacy(2), 1) is None
    assert receipts.check("a", privacy(2, fingerprint="new data"), 2) is None
    assert receipts.check("a", None, 2) is None
    assert receipts.check("a", {"epsilon": 1.0}, 2) is None


def test_a_resumed_run_reloads_the_receipts_from_metrics():
    kept = [
        {"round": 0, "privacy": {}},
        {"round": 1, "privacy": {"a": privacy(2)}},
        {"round": 2, "privacy": {"a": privacy(3)}},
    ]
    receipts = SiteReceipts.from_metrics(kept)

    assert receipts.check("a", privacy(3), 3) is not None  # rolled back to after round 2's line
    assert receipts.check("a", privacy(4), 3) is None

"""Privacy accounting and the records that prove a spend.

``accounting`` is the pure maths (DP-SGD releases, ε by PRV or RDP, σ calibration), made fast
by ``sgm_rdp`` (the subsampled Gaussian's RDP, memoised), ``sgm_prv`` (Opacus's PRV pipeline
on it) and ``noise_search`` (calibration that replays Opacus's bisection), all giving the very
values Opacus gives. ``ledger`` is a site's durable, hash-chained record of its data's spend,
with its round line in ``ledger_entry`` and its files on disk (lock, high-water mark, where
ledgers live) in ``ledger_storage``, and every ledger under a root summarised read-only (for
``fedlora budget``) in ``ledger_summary``; ``server_ledger`` is the coordinator's record of its
central-DP releases; ``hashchain`` the chained-line format both ledgers use;
``update_clipping`` central DP's clipping of one site's update, at the coordinator or (before
a secure sum) at the site.
"""

"""Privacy accounting and the records that prove a spend.

``accounting`` is pure maths (DP-SGD releases, ε by PRV or RDP, σ calibration); ``ledger`` is a
site's durable, hash-chained record of its data's spend; ``server_ledger`` the coordinator's
record of its central-DP releases; ``hashchain`` the chained-line format both ledgers use.
"""

"""Everything that reaches into Flower's internals, behind one seam.

Each module wraps or calls something Flower does not offer as public API (held pulls and the
operator-only boundary on the SuperLink, the warm worker and wake signals on the SuperNode,
polling tunings, the entry points that start them) and checks first that the installed Flower
has what it touches; the canary tests in ``tests/unit`` fail when a Flower release changes it.
"""

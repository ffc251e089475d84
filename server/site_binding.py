"""Which site each node speaks for: a reply counts for the site bound to the node it came from.

A reply declares its site's name, and a site could declare another's. The coordinator knows
which node a reply came from (Flower's node id: the SuperLink authenticates each SuperNode's
key, and a reply answers one message sent to one node), so it binds names to nodes:

- with a roster (node id -> enrolled site name, written when the sites were registered), a
  node speaks for its enrolled site only;
- without one, the first name a node declares is bound to it for the run (trust on first
  use): a later different name from that node, or the same name from a second node, is
  refused. The binding is recorded in the run's ``config.json`` (``site-nodes``) and a resumed
  run keeps it for the nodes that are connected again (a simulation gives its virtual nodes
  new ids at every start; their old bindings are dropped, and the names bound afresh).

A refused reply is dropped from the round like any malformed one, under the name of the node's
own site, never under the name it claimed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from fedlora.errors import ConfigError
from fedlora.replies import ReplyRejectedError


class SiteBinding:
    """Node id <-> site name for one run (see the module docstring).

    Parameters
    ----------
    roster
        Node id -> enrolled site name; ``None`` binds each node to the first name it declares.

    Raises
    ------
    ConfigError
        When the roster gives two nodes the same site name.
    """

    def __init__(self, roster: Mapping[int, str] | None = None) -> None:
        self.roster = dict(roster) if roster is not None else None
        if self.roster is not None:
            names = list(self.roster.values())
            twice = sorted({name for name in names if names.count(name) > 1})
            if twice:
                raise ConfigError(f"the roster enrols {twice} for more than one node")
        self._names: dict[int, str] = dict(self.roster or {})

    @property
    def names(self) -> dict[int, str]:
        """Node id -> bound site name (a copy)."""
        return dict(self._names)

    def name(self, node_id: int) -> str:
        """The site bound to ``node_id``, or ``node-<id>`` while none is."""
        return self._names.get(node_id, f"node-{node_id}")

    def restore(self, saved: Mapping[str, str], node_ids: Iterable[int]) -> None:
        """Take back a resumed run's bindings (``config.json``'s ``site-nodes``).

        Only nodes among ``node_ids`` (connected now) keep theirs; a roster takes precedence.
        """
        if self.roster is not None:
            return
        connected = set(node_ids)
        for node, site in saved.items():
            node_id = int(node)
            if node_id in connected and site not in self._names.values():
                self._names[node_id] = str(site)

    def bind(self, node_id: int, declared: str) -> bool:
        """Check that ``node_id`` may speak for ``declared``; bind it on first use.

        Returns
        -------
        bool
            Whether this call made a new binding.

        Raises
        ------
        ReplyRejectedError
            When the node is not on the roster or is bound to another site, or when another
            node is bound to ``declared``.
        """
        bound = self._names.get(node_id)
        if bound == declared:
            return False
        if self.roster is not None and bound is None:
            raise ReplyRejectedError(f"node {node_id} is not on the roster (declares {declared!r})")
        if bound is not None:
            raise ReplyRejectedError(
                f"node {node_id} speaks for site {bound!r} but declares {declared!r}"
            )
        holder = next((node for node, site in self._names.items() if site == declared), None)
        if holder is not None:
            raise ReplyRejectedError(
                f"node {node_id} declares site {declared!r}, which node {holder} speaks for"
            )
        self._names[node_id] = declared
        return True

    def to_json(self) -> dict[str, str]:
        """The bindings as ``config.json`` records them (``{"<node id>": site}``)."""
        return {str(node): site for node, site in sorted(self._names.items())}

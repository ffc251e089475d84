"""fedlora: private federated fine-tuning of LoRA adapters.

One import name for the whole product. The shared core lives in this folder; the roles the
users asked to see at the repository's top level install beneath it: ``fedlora.server`` (the
ServerApp and its round loop), ``fedlora.clients`` (the ClientApp), ``fedlora.strategies``
(aggregation) and ``fedlora.simulations`` (scenario data and the one-machine harness).
``docs/architecture.md`` describes the house and where a new module goes.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from pathlib import Path

__version__ = "0.1.0"

ROLES = ("server", "clients", "strategies", "simulations")
"""The role packages: folders beside ``fedlora/`` in a source tree, ``fedlora.<role>`` when
imported."""


class _RoleFinder(importlib.abc.MetaPathFinder):
    """Finds ``fedlora.<role>`` in a source tree, where the roles stand beside this package.

    An installed fedlora holds the roles inside its own folder and needs no finder. A source
    tree does: a checkout run without installing it, and a Flower App bundle, which Flower
    unpacks as the repository's folders and puts first on ``sys.path`` (so this copy of
    ``fedlora`` shadows an installed one, and its roles must come from the same bundle).
    """

    def __init__(self, roles: dict[str, Path]) -> None:
        self.roles = roles

    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        folder = self.roles.get(fullname)
        if folder is None:
            return None
        return importlib.util.spec_from_file_location(
            fullname, folder / "__init__.py", submodule_search_locations=[str(folder)]
        )


def _find_roles_beside() -> None:
    here = Path(__file__).resolve().parent
    if all((here / role).is_dir() for role in ROLES):
        return  # installed: the roles are subpackages of this folder
    tree = here.parent
    roles = {
        f"{__name__}.{role}": tree / role
        for role in ROLES
        if (tree / role / "__init__.py").is_file()
    }
    if roles and not any(isinstance(finder, _RoleFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _RoleFinder(roles))


_find_roles_beside()

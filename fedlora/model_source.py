"""Where a base model comes from: a local folder, a hub id, or a GGUF file.

:func:`resolve_source` turns the run's ``model`` and ``gguf-file`` settings into the arguments of
``from_pretrained`` without loading anything, so a bad path is refused before a run starts. A GGUF
file is named either directly (``--model path/to/model.gguf``) or as a file inside a folder or hub
repository (``--model FOLDER --gguf-file NAME``); transformers dequantises it on load, which needs
the ``gguf`` package (the ``real`` extra).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from fedlora.assets_cache import model_asset_names, resolve_asset
from fedlora.errors import ModelError

SourceKind = Literal["directory", "hub", "gguf"]

GGUF_SUFFIX = ".gguf"
GGUF_INSTALL_HINT = "pip install 'fedlora[real]' (or: pip install gguf)"


@dataclass(frozen=True)
class ModelSource:
    """The arguments of ``from_pretrained`` for a model that is not a preset.

    Attributes
    ----------
    kind
        ``"directory"`` (a saved model folder), ``"hub"`` (a hub id) or ``"gguf"`` (a GGUF file,
        local or in a hub repository).
    location
        The folder or hub id handed to ``from_pretrained``.
    gguf_file
        The GGUF file's name inside ``location``, or ``None``.
    local
        Whether ``location`` is on this machine (then nothing is downloaded).
    """

    kind: SourceKind
    location: str
    gguf_file: str | None
    local: bool

    def describe(self) -> str:
        """The source in words, for error messages."""
        if self.gguf_file is not None:
            return f"GGUF file {self.gguf_file} in {self.location}"
        return f"{'local directory' if self.local else 'hub id'} {self.location}"


def resolve_source(spec: str, gguf_file: str = "", presets: Sequence[str] = ()) -> ModelSource:
    """Say where ``spec`` (and ``gguf_file``) point, checking paths but loading nothing.

    Parameters
    ----------
    spec
        A local folder, a hub id of the form ``org/name``, a ``.gguf`` file, or the short name
        of a cached real model (``smollm2-135m``, ``minilm-l6``: ``fedlora assets fetch``).
    gguf_file
        The GGUF file inside the folder or hub repository ``spec``; ``""`` for none.

    Returns
    -------
    ModelSource
        The resolved source.

    Raises
    ------
    ModelError
        For a path that does not exist, a file that is not GGUF, a GGUF file named twice or
        missing from its folder, a name that is no hub id, or a GGUF source while the ``gguf``
        package is not installed.
    AssetError
        For the short name of a real model that is not in the asset cache (the message names
        the command that fetches it).
    """
    if gguf_file and (Path(gguf_file).name != gguf_file or gguf_file in (".", "..")):
        raise ModelError(
            f"gguf-file must be a file name inside the model folder, got {gguf_file!r}"
        )
    path = Path(spec).expanduser()
    if spec in model_asset_names() and not path.exists():
        if gguf_file:
            raise ModelError(f"model {spec} is a cached real model; gguf-file is not for it")
        return resolve_source(str(resolve_asset(spec)), presets=presets)
    if path.is_file() or spec.lower().endswith(GGUF_SUFFIX):
        source = _gguf_path(spec, path, gguf_file)
    elif path.is_dir():
        source = _folder(path, gguf_file)
    elif spec.startswith((".", "/", "~")) or spec.count("/") > 1 or path.exists():
        raise ModelError(f"model directory not found: {spec}")
    elif "/" not in spec:
        raise ModelError(
            f"unknown model {spec!r}: not a preset ({', '.join(presets)}), not a real model "
            f"({', '.join(model_asset_names())}), not a local directory or GGUF file, and not a "
            "hub id of the form org/name"
        )
    else:
        source = ModelSource("gguf" if gguf_file else "hub", spec, gguf_file or None, local=False)
    if source.kind == "gguf":
        require_gguf()
    return source


def require_gguf() -> None:
    """Refuse a GGUF source early when the ``gguf`` package is missing.

    Raises
    ------
    ModelError
        Saying what to install.
    """
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise ModelError(
            f"loading a GGUF model needs the gguf package: {GGUF_INSTALL_HINT}"
        ) from None


def _gguf_path(spec: str, path: Path, gguf_file: str) -> ModelSource:
    if not path.is_file():
        raise ModelError(f"GGUF file not found: {spec}")
    if path.suffix.lower() != GGUF_SUFFIX:
        raise ModelError(
            f"model {spec} is a file but not a {GGUF_SUFFIX} file; give a GGUF file, a model "
            "folder, a hub id or a preset"
        )
    if gguf_file:
        raise ModelError(
            f"model {spec} is already a GGUF file; gguf-file ({gguf_file}) is only for a folder "
            "or hub id"
        )
    return ModelSource("gguf", str(path.parent), path.name, local=True)


def _folder(path: Path, gguf_file: str) -> ModelSource:
    if not gguf_file:
        return ModelSource("directory", str(path), None, local=True)
    if not (path / gguf_file).is_file():
        raise ModelError(f"GGUF file {gguf_file} not found in {path}")
    return ModelSource("gguf", str(path), gguf_file, local=True)

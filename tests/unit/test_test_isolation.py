"""The test suite never touches the user's own ledgers, whatever a fixture's scope."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def home_seen_by_a_module_fixture() -> str | None:
    return os.environ.get("FEDLORA_HOME")


def test_a_module_scoped_fixture_sees_a_temporary_home(
    home_seen_by_a_module_fixture: str | None, tmp_path_factory: pytest.TempPathFactory
) -> None:
    assert home_seen_by_a_module_fixture is not None
    base = tmp_path_factory.getbasetemp().resolve()
    assert Path(home_seen_by_a_module_fixture).resolve().is_relative_to(base)


def test_each_test_gets_its_own_home_inside_the_temporary_folder(
    tmp_path_factory: pytest.TempPathFactory, home_seen_by_a_module_fixture: str | None
) -> None:
    home = Path(os.environ["FEDLORA_HOME"])
    assert home.resolve().is_relative_to(tmp_path_factory.getbasetemp().resolve())
    assert str(home) != home_seen_by_a_module_fixture

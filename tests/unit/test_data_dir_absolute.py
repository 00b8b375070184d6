"""The data directory (and every path setting) is absolute once settings exist.

Settings travel by pickle to Serve replicas, which run in the Ray node's own working
directory (another node's, on a cluster): a relative ``data`` there names another
SQLite file and another artifact tree, and the control plane then refuses the tokens
the driver issued. Resolving paths when the settings are made, in the process that
reads the configuration, makes every replica reach the same store.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest

from infaas.settings import Settings, load_settings


def _in(directory: Path) -> Settings:
    previous = Path.cwd()
    os.chdir(directory)
    try:
        return Settings(data_dir=Path("data"), attestation_policy=Path("policy.yaml"))
    finally:
        os.chdir(previous)


def test_relative_paths_resolve_against_the_directory_the_settings_were_made_in(
    tmp_path: Path,
) -> None:
    settings = _in(tmp_path)
    assert settings.data_dir == (tmp_path / "data").resolve()
    assert settings.attestation_policy == (tmp_path / "policy.yaml").resolve()
    assert settings.resolved_store_url == f"sqlite:///{(tmp_path / 'data').resolve()}/infaas.db"


def test_a_replica_in_another_working_directory_reaches_the_same_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    driver, replica_cwd = tmp_path / "driver", tmp_path / "ray-session"
    driver.mkdir()
    replica_cwd.mkdir()
    settings = _in(driver)
    shipped = pickle.loads(pickle.dumps(settings))  # what a Serve replica receives
    monkeypatch.chdir(replica_cwd)
    assert shipped.resolved_store_url == settings.resolved_store_url
    assert shipped.zoo_dir == settings.zoo_dir
    assert not str(shipped.data_dir).startswith(str(replica_cwd))


def test_the_environment_and_a_relative_sqlite_url_resolve_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("INFAAS_DATA_DIR", "~/somewhere/../infaas-data")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    settings = load_settings(store_url="sqlite:///state/infaas.db")
    assert settings.data_dir == (tmp_path / "home" / "infaas-data").resolve()
    assert settings.store_url == f"sqlite:///{(tmp_path / 'state' / 'infaas.db').resolve()}"
    # absolute URLs and other stores are left as they are
    assert load_settings(store_url="sqlite:////var/x.db").store_url == "sqlite:////var/x.db"
    assert load_settings(store_url="redis://h:1/0").store_url == "redis://h:1/0"

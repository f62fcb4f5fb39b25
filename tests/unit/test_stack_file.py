"""The stack's files: credentials made once and reused, stack.json private and findable."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from edgepub.services.stack import credentials
from edgepub.shared import stack_file
from edgepub.shared.errors import ConfigError


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _info(directory: Path, pid: int) -> stack_file.StackInfo:
    return stack_file.StackInfo(
        nats_url="nats://127.0.0.1:4222",
        registry="127.0.0.1:5000",
        registry_username="edgepub",
        registry_password="reg-secret",
        registry_insecure=True,
        sdk_user="admin",
        sdk_password="sdk-secret",
        data_dir=str(directory),
        pid=pid,
    )


def test_credentials_are_generated_once_then_reused(tmp_path: Path) -> None:
    first = credentials.load_or_create_credentials(tmp_path / "home")
    second = credentials.load_or_create_credentials(tmp_path / "home")
    assert first == second
    path = tmp_path / "home" / credentials.CREDENTIALS_FILE
    assert _mode(path) == 0o600
    assert _mode(tmp_path / "home") == 0o700


def test_a_corrupt_credentials_file_is_refused_with_the_path(tmp_path: Path) -> None:
    (tmp_path / credentials.CREDENTIALS_FILE).write_text('{"nats_users": 3}')
    with pytest.raises(ConfigError, match=credentials.CREDENTIALS_FILE):
        credentials.load_or_create_credentials(tmp_path)


def test_stack_json_is_private_and_round_trips(tmp_path: Path) -> None:
    info = _info(tmp_path, os.getpid())
    path = stack_file.write_stack_info(tmp_path, info)
    assert _mode(path) == 0o600
    assert stack_file.load_stack_info(tmp_path) == info


def test_write_private_tightens_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("old")
    path.chmod(0o644)
    stack_file.write_private(path, b"new")
    assert path.read_bytes() == b"new" and _mode(path) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_load_stack_info_without_a_stack_says_how_to_start_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="edgepub up"):
        stack_file.load_stack_info(tmp_path)


def test_load_stack_info_refuses_a_stack_whose_process_is_gone(tmp_path: Path) -> None:
    stack_file.write_stack_info(tmp_path, _info(tmp_path, pid=2**22 + 12345))
    with pytest.raises(ConfigError, match="not running"):
        stack_file.load_stack_info(tmp_path)


def test_remove_stack_info_only_removes_its_own(tmp_path: Path) -> None:
    stack_file.write_stack_info(tmp_path, _info(tmp_path, pid=os.getpid()))
    stack_file.remove_stack_info(tmp_path, pid=os.getpid() + 1)
    assert (tmp_path / stack_file.STACK_FILE).exists()
    stack_file.remove_stack_info(tmp_path, pid=os.getpid())
    assert not (tmp_path / stack_file.STACK_FILE).exists()


def test_data_dir_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EDGEPUB_HOME", str(tmp_path / "h"))
    assert stack_file.data_dir() == tmp_path / "h"
    assert stack_file.data_dir(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv("EDGEPUB_HOME")
    assert stack_file.data_dir() == Path.home() / ".edgepub"

"""``python -m helios_raw init``: writes a commented example config that loads, and never
overwrites a file unless ``--force`` is given."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

from helios_raw.config import (
    Config,
    LocalConfig,
    RemoteConfig,
    ServerConfig,
    load_config,
)
from helios_raw.http.limits import Limits

ROOT = Path(__file__).resolve().parent.parent


def run_init(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "helios_raw", "init", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)


def keys_by_section(text: str) -> dict[str, set[str]]:
    """Every key the file shows per section, set or commented out."""
    sections: dict[str, set[str]] = {}
    current = ""
    for line in text.splitlines():
        header = re.match(r"^\[([\w.]+)\]\s*$", line)
        if header:
            current = header.group(1)
            sections.setdefault(current, set())
            continue
        key = re.match(r"^#?\s*(\w+) = ", line)
        if key and current:
            sections[current].add(key.group(1))
    return sections


def test_init_writes_a_config_that_loads_with_every_section_and_key(tmp_path: Path) -> None:
    target = tmp_path / "helios.toml"
    result = run_init("--output", str(target), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert str(target) in result.stdout

    config = load_config(str(target), environ={})
    assert config.local == LocalConfig() and config.llm == RemoteConfig()
    assert config.server == ServerConfig() and config.server.limits == Limits()
    assert config.backend_kind == "local"

    text = target.read_text()
    shown = keys_by_section(text)
    expected = {
        "server": {f.name for f in dataclasses.fields(ServerConfig)} - {"limits"},
        "server.limits": {f.name for f in dataclasses.fields(Limits)},
        "local": {f.name for f in dataclasses.fields(LocalConfig)},
        "llm": {f.name for f in dataclasses.fields(RemoteConfig)},
    }
    for section, names in expected.items():
        assert names <= shown.get(section, set()), (section, names - shown.get(section, set()))
    assert sum(line.startswith("#") for line in text.splitlines()) > 40  # it explains itself


def test_init_defaults_to_config_toml_in_the_working_directory(tmp_path: Path) -> None:
    result = run_init(cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert isinstance(load_config(str(tmp_path / "config.toml"), environ={}), Config)


def test_init_refuses_to_overwrite_then_force_overwrites(tmp_path: Path) -> None:
    target = tmp_path / "config.toml"
    target.write_text("# mine\n")

    refused = run_init("--output", str(target), cwd=tmp_path)
    assert refused.returncode != 0
    assert target.read_text() == "# mine\n"
    message = refused.stderr.strip()
    assert "\n" not in message and "Traceback" not in message
    assert "already exists" in message and "--force" in message

    forced = run_init("--output", str(target), "--force", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert target.read_text() != "# mine\n"
    assert load_config(str(target), environ={}).local == LocalConfig()


def test_init_into_a_missing_directory_fails_with_one_sentence(tmp_path: Path) -> None:
    result = run_init("--output", str(tmp_path / "absent" / "config.toml"), cwd=tmp_path)
    assert result.returncode != 0
    message = result.stderr.strip()
    assert "\n" not in message and "does not exist" in message
    assert not (tmp_path / "absent").exists()

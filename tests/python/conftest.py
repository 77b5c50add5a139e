"""Shared helpers: the repository root and the built operator binary."""

import os
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def target_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))


@pytest.fixture(scope="session")
def operator_bin() -> pathlib.Path:
    """The streamjob-operator binary, built by `cargo build --workspace --bins`."""
    path = target_dir() / "debug" / "streamjob-operator"
    if not path.exists():
        subprocess.run(["cargo", "build", "-q", "-p", "streamjob-operator"], cwd=ROOT, check=True)
    return path


@pytest.fixture(scope="session")
def root() -> pathlib.Path:
    return ROOT

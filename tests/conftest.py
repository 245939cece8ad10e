"""Shared test configuration: x64 on (via importing smoothjax), fixed keys, paths to shared data."""

import os
import pathlib

import pytest

import smoothjax  # noqa: F401  (turns on x64 before any test traces)

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("SMOOTHJAX_SHARED", ROOT.parent / "shared"))
PEER_DATA = SHARED / "peer-data" / "levine"


@pytest.fixture
def peer_data_dir():
    if not PEER_DATA.is_dir():
        pytest.skip(f"peer data not found at {PEER_DATA}")
    return PEER_DATA

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def write_scenario(tmp_path):
    def _write(raw: dict, name: str = "s.yaml") -> Path:
        p = tmp_path / name
        p.write_text(yaml.safe_dump(raw, sort_keys=False))
        return p

    return _write

"""Where bundled data lives, and how paths in scenario files are resolved."""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path

_REPO_TRACES = Path(__file__).resolve().parents[1] / "traces"


def traces_dir() -> Path:
    """The bundled traces: $FLEXPIPE_TRACES, else the source checkout's traces/, else the copy a
    wheel install puts under <prefix>/share/flexpipe/traces."""
    env = os.environ.get("FLEXPIPE_TRACES")
    if env:
        return Path(env)
    if _REPO_TRACES.is_dir():
        return _REPO_TRACES
    return Path(sysconfig.get_path("data")) / "share" / "flexpipe" / "traces"


def resolve_data_path(value: str, base_dir: Path | None) -> str:
    """A path as written in a scenario: absolute; else relative to the scenario file; else to the
    working directory; else `traces/...` means the bundled traces. Returns the first that exists
    (or the value unchanged, so validation can say it is missing)."""
    p = Path(value).expanduser()
    if p.is_absolute():
        return str(p)
    candidates = [base_dir / p] if base_dir is not None else []
    candidates.append(Path.cwd() / p)
    if p.parts and p.parts[0] == "traces":
        candidates.append(traces_dir().joinpath(*p.parts[1:]))
    if p.parts and p.parts[0] == "calibrate":
        candidates.append(traces_dir().parent / p)  # the shipped profiles sit beside the traces
    for c in candidates:
        if c.exists():
            return str(c.resolve())
    return value


def unwritable(path: Path, kind: str) -> str | None:
    """Why `path` cannot become a folder (kind 'folder') or a file (kind 'file'), checked before
    the work that fills it; None if it looks writable. A later OS error is still possible."""
    path = Path(path)
    if kind == "folder" and path.exists() and not path.is_dir():
        return f"{path} is a file, not a folder"
    if kind == "file" and path.is_dir():
        return f"{path} is a folder; give a file name"
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                return f"{parent} is a file, so {path} cannot be created under it"
            if not os.access(parent, os.W_OK | os.X_OK):
                return f"no permission to write in {parent}"
            break
    return None

"""Results folders that never mix two runs: checked before anything is simulated, written into a
staging folder beside the target, and moved into place when done (or interrupted, or failed), with
`run_info.json` saying which (`status`: complete / interrupted / failed).

Where a target already exists:
  - a flexpipe results folder (it has run_info.json, summary.json, comparison.csv, loadsweep.csv or
    evaluation.md): replaced as a whole (renamed aside, the new folder renamed in, the old removed);
  - an empty folder, or the folder we run in: our files are moved into it one by one (in a results
    folder the previous run's files, as its run_info.json lists them, are removed first);
  - any other non-empty folder: refused, unless `force`, when our files are moved into it and
    nothing else in it is touched.
An input (the scenario file, a folder `report` reads) inside the target is refused, as the target's
old content is removed or overwritten; except a results folder's own scenario.yaml, re-run into it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: moves are not serialised between processes
    fcntl = None  # type: ignore[assignment]

INFO = "run_info.json"
MARKERS = (INFO, "summary.json", "comparison.csv", "loadsweep.csv", "evaluation.md")
TMP_TAG = ".flexpipe-tmp-"  # staging folders: <parent>/.<name>.flexpipe-tmp-<id>; `report` skips them
OLD_TAG = ".flexpipe-old-"
FORCE_HELP = ("Write into --out even if it is a non-empty folder without flexpipe results (flexpipe's files "
              "are added, nothing else is removed). A previous flexpipe results folder there is always "
              "replaced as a whole, once the new results are complete or interrupted.")


class OutDirError(Exception):
    """A results folder we must not or cannot write; the message is one line for the user."""


def is_results_folder(p: Path) -> bool:
    return p.is_dir() and any((p / m).is_file() for m in MARKERS)


def is_staging(name: str) -> bool:
    return TMP_TAG in name or OLD_TAG in name


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def check_out_dir(target: Path, *, force: bool = False, inputs: Iterable[Path] = (), option: str = "--out") -> None:
    """Refuse, before anything is computed, a target we could not or should not write."""
    t = Path(target).expanduser().absolute()
    for p in [*reversed(t.parents), t]:
        if p.exists() and not p.is_dir():
            raise OutDirError(f"{option} {target}: {p} is a file, not a folder")
    anc = next(p for p in [t, *t.parents] if p.exists())
    # the staging folder goes beside the target: its parent (or the nearest existing ancestor) must be writable
    where = t.parent if t.parent.exists() else anc
    for d in ([where, t] if t.exists() else [where]):
        if not _writable(d):
            raise OutDirError(f"{option} {target}: cannot write in {d} (no permission, or a read-only file system)")
    rt = t.resolve()
    for inp in inputs:
        ri = Path(inp).expanduser().resolve()
        if ri == rt / "scenario.yaml" and is_results_folder(rt):
            continue  # re-running a results folder's own scenario.yaml into it: the new run writes it again
        if _inside(ri, rt):
            raise OutDirError(f"{option} {target}: the input {inp} is inside it, and writing the results would "
                              "replace it; choose another folder")
    if t.is_dir() and any(t.iterdir()) and not is_results_folder(t) and not force:
        raise OutDirError(f"{option} {target}: the folder is not empty and holds no flexpipe results; choose "
                          "another folder, or pass --force to add flexpipe's files to it")


def _writable(d: Path) -> bool:
    """Try it (os.access says yes to root on a read-only file system)."""
    if not os.access(d, os.W_OK | os.X_OK):
        return False
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".flexpipe-probe-", dir=d))
    except OSError:
        return False
    return True


def read_info(folder: Path) -> dict[str, Any]:
    try:
        info = json.loads((folder / INFO).read_text())
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


@contextmanager
def _locked(parent: Path) -> Iterator[None]:
    """Serialise the final moves of concurrent runs into one parent folder (flock on the folder)."""
    if fcntl is None:
        yield
        return
    fd = os.open(parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


class ResultsFolder:
    """A results folder being written: `path` is the staging folder; `finish` moves it into place."""

    def __init__(self, target: Path, kind: str, *, force: bool = False) -> None:
        self.target = Path(target).expanduser().absolute()
        self.kind, self.force = kind, force
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.path = self.target.parent / f".{self.target.name}{TMP_TAG}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.path.mkdir()
        self.info: dict[str, Any] = {}  # extra run_info.json fields (timing, runs done / missing)

    def finish(self, status: str, **fields: Any) -> Path:
        info = {"tool": "flexpipe-sim", "kind": self.kind, "status": status, **self.info, **fields}
        info["files"] = sorted(p.name for p in self.path.iterdir() if p.name != INFO) + [INFO]
        (self.path / INFO).write_text(json.dumps(info, indent=2) + "\n")
        with _locked(self.target.parent):
            self._move_into_place()
        return self.target

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def _move_into_place(self) -> None:
        t = self.target
        if not t.exists():
            os.rename(self.path, t)
            return
        cwd = Path.cwd().resolve()
        if is_results_folder(t) and not _inside(cwd, t.resolve()):
            old = t.parent / f".{t.name}{OLD_TAG}{os.getpid()}-{uuid.uuid4().hex[:8]}"
            os.rename(t, old)  # the moment between these two renames is the only one without a folder
            os.rename(self.path, t)
            shutil.rmtree(old, ignore_errors=True)
            return
        if is_results_folder(t):  # the folder we run in: remove the previous run's files only
            for name in read_info(t).get("files", []):
                if "/" not in name and name not in ("", ".", ".."):
                    _remove(t / name)
        for p in sorted(self.path.iterdir()):
            _remove(t / p.name)
            os.rename(p, t / p.name)
        os.rmdir(self.path)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    elif p.exists() or p.is_symlink():
        p.unlink()


@contextmanager
def results_folder(target: Path, kind: str, *, force: bool = False) -> Iterator[ResultsFolder]:
    """Stage a results folder; on leaving, move it into place as complete, interrupted (Ctrl-C) or
    failed (any other error: what was written so far is kept), then let the exception go on."""
    rf = ResultsFolder(target, kind, force=force)
    try:
        yield rf
    except KeyboardInterrupt:
        rf.finish("interrupted", reason="interrupted (Ctrl-C)")
        raise
    except BaseException as e:
        rf.finish("failed", reason=f"{type(e).__name__}: {e}")
        raise
    else:
        rf.finish(rf.info.pop("status", "complete"))

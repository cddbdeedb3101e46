"""Writing files so that a reader never sees half of one: the one temp-then-rename of the harness.

A checkpoint, a result file, a report or a resumable checkpoint's folder is written under a temporary
name beside its final one and renamed into place only when complete. A crash, a kill or a full disk
leaves the old file (or nothing) where a reader looks, and no partial temporary file behind. Scratch
folders in the system's temporary directory carry their process's pid, so that one a SIGKILL left is
known as stale (:func:`process_alive`) and removed by the next command.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.errors import HarnessError


def write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp_path)``, then rename the temporary file over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk or a kill leaves no partial file behind
        raise


def write_text_atomically(path: Path, text: str) -> None:
    write_atomically(path, lambda tmp: tmp.write_text(text))


def write_json_atomically(path: Path, data: dict[str, Any]) -> None:
    write_text_atomically(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def build_directory_atomically(final: Path, fill: Callable[[Path], bool | None]) -> bool:
    """Call ``fill(tmp_dir)`` on an empty ``<final>.tmp`` folder, then rename it to ``final``; a folder
    left by an earlier, interrupted attempt is removed first. ``fill`` returning False discards the
    folder (nothing is published); returns whether ``final`` was made."""
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if fill(tmp) is False:
            return False
        os.rename(tmp, final)
        return True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone after the rename; else whatever was written so far


def check_writable(directory: Path) -> None:
    """Create ``directory`` and make sure a file can be written there, before work whose result
    would have nowhere to go."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=directory).close()
    except OSError as exc:
        raise HarnessError(f"cannot write to {directory}/ ({exc.strerror}); run from a directory you can write to") from None


# Scratch folders in the system's temporary directory carry the pid of the process that made them, so that
# one a SIGKILL left behind (a downloaded checkpoint, every file of a run) is known as stale and removed.
SCRATCH_PREFIX = "harness-"


def scratch_directory(kind: str) -> tempfile.TemporaryDirectory:
    """A temporary folder ``harness-<kind>-<pid>-*``, removed when its ``with`` block ends; first, the
    folders of this kind whose process is gone are removed."""
    remove_stale_scratch(kind)
    return tempfile.TemporaryDirectory(prefix=f"{SCRATCH_PREFIX}{kind}-{os.getpid()}-")


def make_scratch_directory(kind: str) -> Path:
    """:func:`scratch_directory` for a folder its caller removes itself."""
    remove_stale_scratch(kind)
    return Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{kind}-{os.getpid()}-"))


def remove_stale_scratch(kind: str) -> list[Path]:
    """Remove the ``harness-<kind>-<pid>-*`` folders whose process no longer runs; returns them."""
    removed = []
    for path in Path(tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}{kind}-*-*"):
        pid = path.name.removeprefix(f"{SCRATCH_PREFIX}{kind}-").partition("-")[0]
        if path.is_dir() and pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (another user's counts; a zombie, our own child not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:  # no /proc (not Linux): kill's answer stands
        return True

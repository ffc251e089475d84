"""Atomic file writes and the per-user data folder.

A reader of a file written here sees the old content or the new, never half of it.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from fedlora.errors import RunDirError

HOME_ENV = "FEDLORA_HOME"
"""Environment variable naming the per-user folder where fedlora keeps ledgers and assets."""


def user_data_root() -> Path:
    """The per-user folder where fedlora keeps what outlives a run (ledgers, cached assets).

    ``$FEDLORA_HOME`` when set, else ``$XDG_DATA_HOME/fedlora``, else
    ``~/.local/share/fedlora``: outside any repository or run output folder.
    """
    home = os.environ.get(HOME_ENV)
    if home:
        return Path(home).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "fedlora"


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a flushed temporary file and a rename.

    The file gets the mode a plain ``open`` would give it (0666 less the umask), not the
    owner-only mode of the temporary file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o666 & ~_umask())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, payload: Any) -> None:
    """Write ``payload`` as indented JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def append_line(path: Path, line: str) -> None:
    """Append one line to ``path`` and flush it to disk before returning.

    A crash can at worst leave a truncated last line, which readers of JSON-lines files
    in fedlora detect.
    """
    with path.open("a", encoding="utf-8") as handle:
        handle.write(line.rstrip("\n") + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def fsync_tree(root: Path) -> None:
    """Flush every file under ``root`` and the directories themselves to disk."""
    for current, _dirs, files in os.walk(root):
        for name in files:
            with open(os.path.join(current, name), "rb") as handle:
                os.fsync(handle.fileno())
        _fsync_dir(Path(current))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_json_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file, in order (blank lines skipped).

    Raises
    ------
    RunDirError
        When the file cannot be read, or naming the first line that is not a JSON object
        (a run killed mid-write can leave a truncated last line).
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise RunDirError(f"cannot read {path}: {exc}") from exc
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise RunDirError(
                f"{path} line {number} is not valid JSON ({exc}); the file is corrupted"
            ) from exc
        if not isinstance(record, dict):
            raise RunDirError(f"{path} line {number} is not a JSON object")
        records.append(record)
    return records

"""Where results go: output paths checked before any work, files written atomically.

Every command that writes calls :func:`output_dir` or :func:`output_file` on its ``--out``
(or ``--trace``) before it starts working, so a path it cannot write is refused in a second,
not after a ten-minute run; and writes with :func:`write_atomic` (a temporary file in the same
folder, then a rename), so an interrupted or failed run leaves the old file or none, never a
half-written one.
"""

from __future__ import annotations

import os
from pathlib import Path

NAME_MAX = 255  # bytes in one path component on Linux, macOS and Windows file systems


class OutputPathError(ValueError):
    """An output path that cannot be written; the message names the flag and the path."""


def _nearest_existing(path: Path) -> Path:
    for parent in [path, *path.parents]:
        try:
            if parent.exists() or parent.is_symlink():
                return parent
        except OSError:
            continue
    return Path(".")


def _check_names(path: Path, flag: str) -> None:
    for part in path.parts:
        if len(part.encode()) > NAME_MAX:
            raise OutputPathError(f"{flag} {_shown(path)}: a name in it is {len(part.encode())} bytes long, "
                                  f"more than file systems allow ({NAME_MAX})")


def _shown(path: Path | str) -> str:
    text = str(path)
    return repr(text) if len(text) <= 100 else repr(text[:97] + "...")


def _check_creatable(path: Path, flag: str) -> None:
    """``path`` does not exist: its nearest existing ancestor must be a writable directory."""
    base = _nearest_existing(path.parent if str(path.parent) else Path("."))
    if not base.is_dir():
        raise OutputPathError(f"{flag} {_shown(path)}: {base} is not a directory, so nothing can be created "
                              "under it")
    if not os.access(base, os.W_OK | os.X_OK):
        raise OutputPathError(f"{flag} {_shown(path)}: {base} is not writable")


def output_dir(path: str | Path, flag: str = "--out") -> Path:
    """Check that ``path`` is, or can be made, a writable directory; returns it (not created)."""
    if not str(path).strip():
        raise OutputPathError(f"{flag}: the path is empty; give a directory")
    path = Path(path)
    _check_names(path, flag)
    if path.exists():
        if not path.is_dir():
            raise OutputPathError(f"{flag} {_shown(path)}: is a file, not a directory")
        if not os.access(path, os.W_OK | os.X_OK):
            raise OutputPathError(f"{flag} {_shown(path)}: the directory is not writable")
        return path
    _check_creatable(path, flag)
    return path


def output_file(path: str | Path, flag: str = "--out") -> Path:
    """Check that ``path`` names a file that can be (over)written; returns it."""
    raw = str(path)
    if not raw.strip():
        raise OutputPathError(f"{flag}: the path is empty; give a file name")
    path = Path(path)
    _check_names(path, flag)
    if path.is_dir() or raw.endswith(("/", os.sep)):
        raise OutputPathError(f"{flag} {_shown(path)}: is a directory; give a file name")
    if path.exists():
        if not path.is_file():
            raise OutputPathError(f"{flag} {_shown(path)}: is not a regular file")
        if not os.access(path, os.W_OK) or not os.access(path.parent, os.W_OK | os.X_OK):
            raise OutputPathError(f"{flag} {_shown(path)}: is not writable")
        return path
    _check_creatable(path, flag)
    return path


def write_atomic(path: str | Path, content: str | bytes) -> Path:
    """Write ``content`` to ``path`` through a temporary file in the same directory and a rename
    (atomic on POSIX and Windows): readers see the old file or the new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if isinstance(content, bytes):
            tmp.write_bytes(content)
        else:
            tmp.write_text(content)
        tmp.replace(path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path

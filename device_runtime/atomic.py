"""Atomic writes: a file or a folder is either the old one or the complete new one, never half of either.

Files go to a temporary name beside their destination and are moved with `os.replace` (atomic on POSIX).
A folder cannot be replaced atomically by rename when the destination exists, so the old folder is first
renamed aside, the new one renamed into place, and the old one removed last: an interruption (Ctrl-C, a
crash) between the two renames leaves the old folder whole under its aside name, and the next replacement
(or `recover_aside`) puts it back. Standard library only: the device side writes manifests too.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

ASIDE_PREFIX = ".replaced."


def _aside(final: Path) -> Path:
    return final.parent / f"{ASIDE_PREFIX}{final.name}"


def recover_aside(final: Path) -> None:
    """If an earlier replacement of `final` was interrupted after the old one was moved aside and before the
    new one arrived, put the old one back; if both exist, the new one won and the aside copy is removed."""
    final = Path(final)
    aside = _aside(final)
    if not (aside.exists() or aside.is_symlink()):
        return
    if final.exists() or final.is_symlink():
        _remove(aside)
    else:
        os.replace(aside, final)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def replace(source: Path, final: Path) -> None:
    """Move `source` (a file, folder or symlink on the same file system) to `final`, replacing what is there.

    A file or link over a file or link is one `os.replace`. Anything involving a folder goes through the
    aside name, so `final` always names either the old or the new thing, whole.
    """
    source, final = Path(source), Path(final)
    recover_aside(final)
    old_is_dir = final.is_dir() and not final.is_symlink()
    new_is_dir = source.is_dir() and not source.is_symlink()
    if not old_is_dir and not new_is_dir:
        os.replace(source, final)
        return
    aside = _aside(final)
    try:
        if final.exists() or final.is_symlink():
            os.replace(final, aside)
        os.replace(source, final)
    except BaseException:  # Ctrl-C included: put the old one back if the new one never arrived
        recover_aside(final)
        raise
    _remove(aside)


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside `final` to write (a file or a folder); move it into place only if the
    block succeeds. On an exception or Ctrl-C the temporary is removed and `final` is untouched."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    tmp = tmp_dir / final.name
    try:
        yield tmp
        if not (tmp.exists() or tmp.is_symlink()):
            raise FileNotFoundError(f"nothing was written for {final}")
        replace(tmp, final)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(Path(path)) as tmp:
        tmp.write_bytes(data)


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, default=str))


def symlink(link: Path, target: Path) -> None:
    """Point `link` at `target` (relative), replacing whatever `link` was; a copy where symlinks fail."""
    link, target = Path(link), Path(target)
    with atomic_path(link) as tmp:
        try:
            os.symlink(os.path.relpath(target.resolve(), link.parent.resolve()), tmp)
        except OSError:
            (shutil.copytree if target.is_dir() else shutil.copy2)(target, tmp)

"""The one way lateint writes a directory or a file: into a temporary sibling, fsync'd, then
renamed into place, so a reader (or the next run after a crash) sees the old state or the
new one, never a half-written one. An existing destination is replaced only when the
caller's predicate says lateint wrote it: nothing here deletes what we did not write.

Used by PLAIDIndex.save (each version directory and CURRENT), the CLI's embeddings
directories and output files, and ColBERT.save.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Callable, Iterator, Optional


class NotOurs(FileExistsError):
    """The destination exists and is not something lateint wrote; nothing was changed."""


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: str) -> None:
    for root, _, files in os.walk(path):
        for name in files:
            p = os.path.join(root, name)
            if os.path.isfile(p) and not os.path.islink(p):
                with open(p, "rb") as f:
                    os.fsync(f.fileno())
        fsync_dir(root)


@contextlib.contextmanager
def atomic_directory(path: str, *, replace_if: Optional[Callable[[str], bool]] = None,
                     tmp: Optional[str] = None) -> Iterator[str]:
    """Yields an empty temporary directory beside `path` to fill (or `tmp`, a name the
    caller owns and cleans up after crashes). When the block succeeds, its files are
    fsync'd and it is renamed to `path`; an existing `path` is first moved aside and removed
    only if `replace_if(path)` is true, else NotOurs is raised. When the block fails, the
    temporary directory is removed and `path` is untouched."""
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    if tmp is None:
        tmp = tempfile.mkdtemp(prefix=".tmp-" + os.path.basename(path) + "-", dir=parent)
    else:
        os.makedirs(tmp)
    try:
        yield tmp
        _fsync_tree(tmp)
        old = None
        if os.path.lexists(path):
            if replace_if is None or not replace_if(path):
                raise NotOurs(f"{path}: exists and was not written by lateint; not replacing it")
            old = tempfile.mkdtemp(prefix=".old-" + os.path.basename(path) + "-", dir=parent)
            os.rename(path, os.path.join(old, "previous"))
        os.rename(tmp, path)
        fsync_dir(parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_file_atomic(path: str, data, *, tmp: Optional[str] = None, mode: Optional[int] = None) -> None:
    """Writes bytes or text to `path` through a temporary sibling (or `tmp`), fsync'd, then
    os.replace: readers see the old file or the new one. New files get the permissions a
    plain open() would give (`mode` overrides)."""
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    if tmp is None:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-" + os.path.basename(path) + "-", dir=parent)
    else:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        if mode is None:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(tmp, mode)
        os.replace(tmp, path)
        fsync_dir(parent)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise

"""Files users keep, written so that a failure never loses or half-writes anything.

Every output is first written into a hidden temporary folder next to its destination (same file
system, so the final rename is atomic and needs no space), flushed to disk and checked by the caller;
only then are the old files moved aside and the new ones renamed into place. A failed rename puts the
old files back. Problems a user can fix (disk full, read-only folder, no permission) become an
`InputError` naming the path and the option that changes it.
"""
from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import tempfile
import time
from contextlib import contextmanager

from ..errors import InputError

log = logging.getLogger(__name__)

_FULL_WORDS = ("no space left", "disk is full", "disk full", "database or disk is full", "enospc")
_SPACE_MARGIN = 64 * 1024     # below this many free bytes a failed write is taken as a full disk


def _existing_ancestor(path: str) -> str:
    folder = os.path.dirname(os.path.abspath(path))
    while not os.path.isdir(folder):
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    return folder


def disk_full(folder: str, exc: BaseException | None = None) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if exc is not None and any(w in str(exc).lower() for w in _FULL_WORDS):
        return True
    try:
        return shutil.disk_usage(folder).free < _SPACE_MARGIN
    except OSError:
        return False


def write_failure(path: str, option: str, exc: BaseException) -> InputError:
    """The one-line error for a failed write: a full disk, a read-only place, or the cause's first line."""
    folder = _existing_ancestor(path)
    if disk_full(folder, exc):
        try:
            free = f" ({shutil.disk_usage(folder).free // 1024} KB free)"
        except OSError:
            free = ""
        return InputError(f"disk full: cannot write {path}{free}. Free some space in {folder} or choose "
                          f"another {option}; nothing was changed")
    if isinstance(exc, OSError) and exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return InputError(f"cannot write {path}: {exc.strerror.lower()} in {folder}. Choose another {option} "
                          "in a folder you can write to")
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return InputError(f"cannot write {path}: {first}. Choose another {option}; nothing was changed")


def check_writable(path: str, option: str) -> None:
    """Fail now, before any work, when `path` could not be written later (checked by really creating
    a file: as root `os.access` says yes even on a read-only mount)."""
    sweep_leftovers(_existing_ancestor(path))
    if os.path.isdir(path):
        raise InputError(f"{option} {path} is a folder: give a file name, e.g. {os.path.join(path, 'result.gpkg')}"
                         if option == "--out" else f"{option} {path} is a folder: give a file name")
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent) and os.path.dirname(parent) != parent:
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise InputError(f"{option} {path}: {parent} is a file, not a folder; choose another {option}")
    folder = _existing_ancestor(path)
    try:
        fd, probe = tempfile.mkstemp(prefix=".socioseg-probe-", dir=folder)
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        raise write_failure(path, option, exc) from None


def fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_LEFTOVER = re.compile(r"^\.socioseg-(old-)?(?:(\d+)-)?[\w]+$")
LEGACY_STALE_S = 600      # a staging folder without a pid in its name is taken as abandoned after this


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:          # EPERM: a process of another user has that id
        return True
    return True


def sweep_leftovers(folder: str) -> None:
    """Staging and backup folders (`.socioseg-*`) of runs that were killed (SIGKILL, a power loss)
    before they could remove them. A backup of a commit that did not finish holds the previous
    output: its files are put back (over any new file placed before the kill), so the earlier result
    is whole again; a finished commit's backup and every staging folder are removed. Folders of
    processes still running are left alone."""
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        m = _LEFTOVER.match(name)
        path = os.path.join(folder, name)
        if not m or not os.path.isdir(path) or os.path.islink(path):
            continue
        try:
            if m.group(2) is not None:
                if _alive(int(m.group(2))) or int(m.group(2)) == os.getpid():
                    continue
            elif time.time() - os.path.getmtime(path) < LEGACY_STALE_S:
                continue
            if m.group(1):
                kept = os.listdir(path)
                if any(not os.path.lexists(os.path.join(folder, f)) for f in kept):
                    for f in kept:         # the commit stopped half-way: the old output comes back whole
                        os.replace(os.path.join(path, f), os.path.join(folder, f))
                    log.warning("restored %s from an interrupted write (%s)", ", ".join(sorted(kept)), path)
            shutil.rmtree(path)
            log.info("removed %s, left by a stopped run", path)
        except OSError as exc:       # a read-only folder, say: leave it, never fail a run over it
            log.info("could not tidy %s: %s", path, exc)


@contextmanager
def staging(path: str, option: str):
    """A temporary folder next to `path` (created with its missing parents), removed afterwards.
    Write into it, then `commit` the produced files. Its name carries this process's id, so that a
    later run can tell a killed run's leftovers (`sweep_leftovers`) from a running one's."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        sweep_leftovers(folder)
        tmp = tempfile.mkdtemp(prefix=f".socioseg-{os.getpid()}-", dir=folder)
    except OSError as exc:
        raise write_failure(path, option, exc) from None
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def commit(produced: dict[str, str], replaced: list[str], path: str, option: str) -> None:
    """Move `produced` {temp file: destination} into place, replacing the files in `replaced`.

    Each new file is flushed to disk first (a full disk may only show here). The old files are moved
    into a backup folder beside them, not deleted, until every new file is in place; on any failure
    they are moved back and the new ones removed.
    """
    try:
        for src in produced:
            fsync_path(src)
    except OSError as exc:
        raise write_failure(path, option, exc) from None
    folder = os.path.dirname(os.path.abspath(path))
    try:
        backup = tempfile.mkdtemp(prefix=f".socioseg-old-{os.getpid()}-", dir=folder) if replaced else None
    except OSError as exc:
        raise write_failure(path, option, exc) from None
    moved: list[tuple[str, str]] = []
    placed: list[str] = []
    try:
        # Noted before each rename: an interrupt (SIGTERM, Ctrl-C) can land right after a rename,
        # before the next statement, and the file must still be put back.
        for old in replaced:
            keep = os.path.join(backup, os.path.basename(old))
            moved.append((keep, old))
            os.replace(old, keep)
        for src, dst in produced.items():
            placed.append((src, dst))
            os.replace(src, dst)
    except BaseException as exc:   # OSError, or Ctrl-C between the renames: put the old files back
        for src, dst in placed:
            try:
                if not os.path.lexists(src):      # it was placed: take it away again
                    os.remove(dst)
            except OSError:
                pass
        try:
            for keep, old in moved:
                if os.path.lexists(keep):
                    os.replace(keep, old)
        except OSError:
            backup = None   # never delete the only copy of the old files
            raise InputError(f"cannot write {path} ({exc}), and the previous files could not be put back: "
                             f"they are in {os.path.dirname(moved[0][0])}") from None
        if isinstance(exc, OSError):
            raise write_failure(path, option, exc) from None
        raise
    finally:
        if backup:
            shutil.rmtree(backup, ignore_errors=True)
    try:
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)   # the renames themselves reach the disk
        finally:
            os.close(dfd)
    except OSError:
        pass

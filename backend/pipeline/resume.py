"""Finished tiles kept on disk beside the output (`<out>.tiles/`), so that a run stopped by a crash or
a cancel goes on where it stopped (`--resume`) and gives the output an uninterrupted run gives.

Each tile is one compressed .npz (its mask and named-object masks, bit-packed, and its numbers),
written to a temporary name, flushed to the disk and renamed, so a tile file is whole or absent; one
damaged anyway (a power loss on a file system that reorders writes) is computed again, with a warning.
`request.json` says what the tiles were computed for: every byte that can change a tile (all files of
each input, the legend and class tables, the model files); tiles of another request are never mixed
in. One run at a time writes a tile folder (`lock`, held by the run's process until it ends).
"""
from __future__ import annotations

import errno
import fcntl
import glob
import hashlib
import json
import logging
import os
import shutil
import zipfile
import zlib

import numpy as np

from ..errors import InputError
from ..geo import grid as geo
from .seams import TileRecord

log = logging.getLogger(__name__)

REQUEST = "request.json"
LOCK = "lock"


def tiles_dir_for(out_path: str) -> str:
    return os.path.abspath(out_path) + ".tiles"


def remove_tiles(folder: str) -> None:
    """The tile folder of a run whose output is written (it is only kept for --resume)."""
    if os.path.isfile(os.path.join(folder, REQUEST)):
        shutil.rmtree(folder, ignore_errors=True)


def request_key(**fields) -> dict:
    """A JSON-able description of a request; equal keys mean the same tiles."""
    return json.loads(json.dumps(fields, sort_keys=True, default=str))


def _stat(path: str) -> dict:
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def input_files(path: str) -> list[str]:
    """Every file that is part of the dataset `path`: itself and the files beside it that GDAL reads
    with it (a Shapefile's .dbf/.shx/.prj/.cpg, a GeoPackage's -wal, a raster's .aux.xml, .ovr or world
    file). Any file of the same stem counts: a stranger with that name only makes the key stricter."""
    path = os.path.abspath(path)
    if not os.path.exists(path):         # a URL or /vsi path: identified by its name only
        return []
    if os.path.isdir(path):              # a dataset that is a folder (e.g. a Shapefile folder)
        return sorted(os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs)
    folder, name = os.path.split(path)
    stem = name.split(".")[0]
    near = glob.glob(os.path.join(glob.escape(folder), glob.escape(stem) + ".*")) + \
        glob.glob(os.path.join(glob.escape(path) + "-*"))
    return sorted(set(near) | {path})


def file_identity(path: str) -> dict:
    files = input_files(path)
    if not files:
        return {"path": path}
    st = _stat(path) if os.path.isfile(path) else {}
    return {"path": os.path.abspath(path), **st,
            "files": {os.path.basename(f): _stat(f) for f in files if os.path.isfile(f)}}


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def engine_identity(engine) -> dict:
    """What identifies an engine's answers beyond its name: the contents of its legend (the map
    reader's name is "mapreader" with any legend) and the identity of its model files (size and
    modification time of every file of a model folder or checkpoint; hashing gigabytes per run would
    cost minutes)."""
    out: dict = {"name": getattr(engine, "name", type(engine).__name__)}
    legend = getattr(engine, "legend_path", None)
    if legend and os.path.isfile(legend):
        out["legend"] = _sha256(legend)
    for arg in str(out["name"]).split(":")[1:]:
        if os.path.exists(arg):
            out.setdefault("files", {}).update({os.path.relpath(f, os.path.dirname(os.path.abspath(arg))): _stat(f)
                                                for f in input_files(arg) if os.path.isfile(f)})
    return out


def shared_tables_identity() -> dict:
    """The contents of the tables every reasoner reads (the socio-class table)."""
    from ..resources import resource

    table = resource("socio_classes.json")
    return {"socio_classes": _sha256(table) if os.path.isfile(table) else None}


class TileStore:
    """`<out>.tiles/`: opened for a request. With `resume`, tiles already there for the same request
    are reused; without it, a folder of an earlier run is refused (its work would be lost)."""

    def __init__(self, folder: str, key: dict, resume: bool):
        self.folder, self.key = folder, key
        self._lock_fd = None
        meta = os.path.join(folder, REQUEST)
        if os.path.isdir(folder) and not (set(os.listdir(folder)) <= {REQUEST, REQUEST + ".part", LOCK}):
            if not os.path.isfile(meta):
                raise InputError(f"{folder} exists and is not a tile folder of this program: move it away "
                                 "or choose another --out")
        os.makedirs(folder, exist_ok=True)
        self._lock()
        try:
            self._open(meta, key, resume)
        except BaseException:
            self.close()
            raise

    def _lock(self) -> None:
        """Held until `close` or the process ends (the kernel drops it then: a killed run leaves no
        stale lock)."""
        fd = os.open(os.path.join(self.folder, LOCK), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                os.close(fd)
                raise
            pid = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            out = self.folder[:-len(".tiles")] if self.folder.endswith(".tiles") else self.folder
            raise InputError(f"another run is writing {out} (pid {pid}): wait for it to finish, or choose "
                             "another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode("ascii"), 0)
        self._lock_fd = fd

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)        # releases the flock
            self._lock_fd = None

    def discard_if_empty(self) -> None:
        """After a run that failed before any tile finished: nothing to resume, so no folder is left
        beside --out (removed while the lock is still held)."""
        if self._lock_fd is not None and not self.finished():
            for name in (REQUEST, REQUEST + ".part", LOCK):
                try:
                    os.remove(os.path.join(self.folder, name))
                except FileNotFoundError:
                    pass
            try:
                os.rmdir(self.folder)
            except OSError:      # something else was put there: leave it
                pass
        self.close()

    def _open(self, meta: str, key: dict, resume: bool) -> None:
        if os.path.isfile(meta):
            try:
                with open(meta, encoding="utf-8") as f:
                    old = json.load(f)
            except (OSError, ValueError):
                old = None
            if old is None:
                raise InputError(f"{self.folder} exists and is not a tile folder of this program: move it away "
                                 "or choose another --out")
            done = len(self.finished())
            if done == 0:           # stopped before any tile finished: nothing to keep
                self._write_json(meta, key)
                return
            if not resume:
                raise InputError(f"{self.folder} holds {done} finished tile(s) of an interrupted run: add --resume "
                                 "to continue it, or delete the folder to start over")
            if old != key:
                changed = sorted(k for k in set(old) | set(key) if old.get(k) != key.get(k))
                raise InputError(f"{self.folder} holds tiles of another request ({', '.join(changed)} differ): run "
                                 "with the same inputs and options to resume, or delete the folder to start over")
        else:
            self._write_json(meta, key)

    def finished(self) -> set[str]:
        return {n[:-4] for n in os.listdir(self.folder) if n.endswith(".npz")}

    def path(self, tile: geo.Tile) -> str:
        return os.path.join(self.folder, tile.id + ".npz")

    def load(self, tile: geo.Tile) -> TileRecord | None:
        """The finished tile, or None where there is none or it cannot be read whole (then it is
        computed again)."""
        return read_tile(self.path(tile), tile)

    def save(self, rec: TileRecord) -> None:
        write_tile(self.folder, rec)

    @staticmethod
    def _write_json(path: str, value: dict) -> None:
        with open(path + ".part", "w", encoding="utf-8") as f:
            json.dump(value, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(path + ".part", path)


def read_tile(p: str, tile: geo.Tile) -> TileRecord | None:
    if not os.path.exists(p):
        return None
    try:
        with np.load(p, allow_pickle=False) as z:
            info = json.loads(str(z["info"]))
            shape = (tile.height, tile.width)
            mask = _unpack(z["mask"], shape)
            names = [(_unpack(z[f"name{i}"], shape), n) for i, n in enumerate(info["names"])]
        return TileRecord(tile, mask, names, [float(s) for s in info["scores"]], [str(n) for n in info["notes"]],
                          int(info["n_boxes1"]), int(info["n_boxes2"]), bool(info["refined"]))
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        log.warning("the finished tile %s is damaged (%s: %s); it is computed again", p, type(exc).__name__, exc)
        try:
            os.remove(p)
        except OSError:
            pass
        return None


def write_tile(folder: str, rec: TileRecord) -> str:
    """One tile result file, whole or absent: written to a temporary name, flushed to the disk, renamed
    (and the rename flushed), so that a power loss cannot leave a finished tile that is not whole."""
    p = os.path.join(folder, rec.tile.id + ".npz")
    tmp = p + f".{os.getpid()}.part"   # not *.npz: a file left by a killed process is no finished tile
    info = {"names": [n for _, n in rec.names], "scores": [float(s) for s in rec.scores],
            "notes": list(rec.notes), "n_boxes1": rec.n_boxes1, "n_boxes2": rec.n_boxes2,
            "refined": bool(rec.refined)}
    arrays = {"mask": np.packbits(rec.mask), "info": np.array(json.dumps(info))}
    arrays.update({f"name{i}": np.packbits(m) for i, (m, _) in enumerate(rec.names)})
    try:
        with open(tmp, "wb") as f:     # a file object: numpy adds no .npz to the name
            np.savez_compressed(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_dir(folder)
    return p


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:          # some file systems cannot sync a folder; the file itself is synced
        pass
    finally:
        os.close(fd)


def _unpack(bits: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return np.unpackbits(bits, count=shape[0] * shape[1]).reshape(shape).astype(bool)

"""Finished tiles kept on disk beside the output (`<out>.tiles/`), so that a run stopped by a crash or
a cancel goes on where it stopped (`--resume`) and gives the output an uninterrupted run gives.

Each tile is one compressed .npz (its mask and named-object masks, bit-packed, and its numbers),
written to a temporary name and renamed, so a tile file is whole or absent. `request.json` says what
the tiles were computed for; tiles of another request are never mixed in.
"""
from __future__ import annotations

import json
import os
import shutil

import numpy as np

from ..errors import InputError
from ..geo import grid as geo
from .seams import TileRecord

REQUEST = "request.json"


def tiles_dir_for(out_path: str) -> str:
    return os.path.abspath(out_path) + ".tiles"


def remove_tiles(folder: str) -> None:
    """The tile folder of a run whose output is written (it is only kept for --resume)."""
    if os.path.isfile(os.path.join(folder, REQUEST)):
        shutil.rmtree(folder, ignore_errors=True)


def request_key(**fields) -> dict:
    """A JSON-able description of a request; equal keys mean the same tiles."""
    return json.loads(json.dumps(fields, sort_keys=True, default=str))


def file_identity(path: str) -> dict:
    st = os.stat(path)
    return {"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


class TileStore:
    """`<out>.tiles/`: opened for a request. With `resume`, tiles already there for the same request
    are reused; without it, a folder of an earlier run is refused (its work would be lost)."""

    def __init__(self, folder: str, key: dict, resume: bool):
        self.folder, self.key = folder, key
        meta = os.path.join(folder, REQUEST)
        if os.path.isdir(folder):
            try:
                with open(meta, encoding="utf-8") as f:
                    old = json.load(f)
            except (OSError, ValueError):
                old = None
            if old is None:
                raise InputError(f"{folder} exists and is not a tile folder of this program: move it away "
                                 "or choose another --out")
            done = len(self.finished())
            if done == 0:           # stopped before any tile finished: nothing to keep
                self._write_json(meta, key)
                return
            if not resume:
                raise InputError(f"{folder} holds {done} finished tile(s) of an interrupted run: add --resume "
                                 "to continue it, or delete the folder to start over")
            if old != key:
                changed = sorted(k for k in set(old) | set(key) if old.get(k) != key.get(k))
                raise InputError(f"{folder} holds tiles of another request ({', '.join(changed)} differ): run "
                                 "with the same inputs and options to resume, or delete the folder to start over")
        else:
            os.makedirs(folder)
            self._write_json(meta, key)

    def finished(self) -> set[str]:
        return {n[:-4] for n in os.listdir(self.folder) if n.endswith(".npz")}

    def path(self, tile: geo.Tile) -> str:
        return os.path.join(self.folder, tile.id + ".npz")

    def load(self, tile: geo.Tile) -> TileRecord | None:
        p = self.path(tile)
        if not os.path.exists(p):
            return None
        try:
            with np.load(p, allow_pickle=False) as z:
                info = json.loads(str(z["info"]))
                shape = (tile.height, tile.width)
                mask = _unpack(z["mask"], shape)
                names = [(_unpack(z[f"name{i}"], shape), n) for i, n in enumerate(info["names"])]
        except (OSError, ValueError, KeyError) as exc:
            raise InputError(f"cannot read the finished tile {p} ({exc}): delete that file and run again "
                             "with --resume (the tile is recomputed)") from None
        return TileRecord(tile, mask, names, info["scores"], info["notes"], info["n_boxes1"],
                          info["n_boxes2"], info["refined"])

    def save(self, rec: TileRecord) -> None:
        p = self.path(rec.tile)
        tmp = p + ".part"     # not *.npz: a file left by a killed process is no finished tile
        info = {"names": [n for _, n in rec.names], "scores": [float(s) for s in rec.scores],
                "notes": list(rec.notes), "n_boxes1": rec.n_boxes1, "n_boxes2": rec.n_boxes2,
                "refined": bool(rec.refined)}
        arrays = {"mask": np.packbits(rec.mask), "info": np.array(json.dumps(info))}
        arrays.update({f"name{i}": np.packbits(m) for i, (m, _) in enumerate(rec.names)})
        try:
            with open(tmp, "wb") as f:     # a file object: numpy adds no .npz to the name
                np.savez_compressed(f, **arrays)
            os.replace(tmp, p)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise

    @staticmethod
    def _write_json(path: str, value: dict) -> None:
        with open(path + ".part", "w", encoding="utf-8") as f:
            json.dump(value, f, indent=1, sort_keys=True)
        os.replace(path + ".part", path)


def _unpack(bits: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return np.unpackbits(bits, count=shape[0] * shape[1]).reshape(shape).astype(bool)

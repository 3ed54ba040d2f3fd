"""Checks of a detect request that cost milliseconds, run before anything that costs seconds or
minutes (reading rasters, loading models): options, files that must exist, outputs that must be
writable, and outputs that must never be one of the inputs."""
from __future__ import annotations

import os

from .errors import InputError

INPUT_OPTIONS = ("--satellite", "--map", "--truth")


def _files_of(path: str) -> list[str]:
    """The files a path stands for: a Shapefile is its sidecars too."""
    from .output.vectors import SHAPEFILE_PARTS

    stem, ext = os.path.splitext(os.path.abspath(path))
    if ext.lower() in SHAPEFILE_PARTS:
        return [stem + e for e in SHAPEFILE_PARTS] + [os.path.abspath(path)]
    return [os.path.abspath(path)]


def same_file(a: str, b: str) -> bool:
    """The same file by real path (symbolic links resolved) or by inode (hard links)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_inputs(named: dict[str, str | None]) -> None:
    for option, path in named.items():
        if path is None:
            continue
        if not path or not os.path.exists(path):
            raise InputError(f"{option} {path!r} does not exist: check the path")
        if os.path.isdir(path) and not path.lower().endswith((".gdb", ".zarr")):
            raise InputError(f"{option} {path} is a folder: give the file inside it")


def check_truth(path: str | None) -> None:
    """The ground truth is read after the run: a file that cannot be read is named now instead."""
    if not path:
        return
    import pyogrio

    try:
        pyogrio.read_info(path)
    except Exception as exc:   # pyogrio's DataSourceError and friends
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(f"--truth {path} is not a vector file GDAL reads ({first}): give a GeoPackage, "
                         "GeoJSON or Shapefile with name/class fields") from None


def check_not_inputs(outputs: dict[str, list[str]], inputs: dict[str, str | None]) -> None:
    """No output (any of its files) may be an input, and no two outputs may share a file."""
    for out_opt, out_files in outputs.items():
        for in_opt, in_path in inputs.items():
            if not in_path:
                continue
            for o in out_files:
                if any(same_file(o, i) for i in _files_of(in_path)):
                    raise InputError(f"{out_opt} {o} is the {in_opt} input: the run would destroy it. "
                                     f"Choose another {out_opt}")
    opts = list(outputs)
    for k, a in enumerate(opts):
        for b in opts[k + 1:]:
            if any(same_file(x, y) for x in outputs[a] for y in outputs[b]):
                raise InputError(f"{a} and {b} name the same file: choose different names")


def check_dump(folder: str, overwrite: bool, inputs: dict[str, str | None], other_outputs: dict[str, list[str]]) -> None:
    """The dump folder is a folder (or can become one), holds no earlier dump unless --overwrite,
    and no input or output lives where tiles would be written."""
    from .output.atomic import check_writable

    if os.path.exists(folder) and not os.path.isdir(folder):
        raise InputError(f"--dump {folder} is a file: --dump takes a folder; choose another name")
    for opt, files in {**{k: [v] for k, v in inputs.items() if v}, **other_outputs}.items():
        for f in files:
            if same_file(f, folder):
                raise InputError(f"--dump {folder} is the {opt} path: choose another --dump folder")
    if os.path.isdir(folder):
        earlier = sorted(n for n in os.listdir(folder) if n.startswith("tile_"))
        if earlier and not overwrite:
            raise InputError(f"--dump {folder} already holds a dump ({earlier[0]}, ...); pass --overwrite to "
                             "replace it or choose another --dump folder")
        root = os.path.realpath(folder) + os.sep
        for opt, files in {**{k: [v] for k, v in inputs.items() if v}, **other_outputs}.items():
            for f in files:
                rel = os.path.realpath(f)
                if rel.startswith(root) and os.path.relpath(rel, root).startswith("tile_"):
                    raise InputError(f"{opt} {f} lies inside --dump {folder}'s tile folders, which the dump "
                                     "rewrites: choose another --dump folder")
    check_writable(os.path.join(folder, "tile_0_0"), "--dump")


MAX_QUERY_CHARS = 300     # the longest place names are under 200 characters


def check_query(query: str, option: str = "--query") -> str:
    q = (query or "").strip()
    if not q:
        raise InputError(f"{option} is empty: say what to find, e.g. --query schools or --query \"Jinan Zoo\"")
    if len(q) > MAX_QUERY_CHARS:     # and a message that quotes it stays one readable line
        raise InputError(f"{option} is {len(q):,} characters long ({q[:60]!r}...): say what to find in a few "
                         f"words (at most {MAX_QUERY_CHARS} characters), e.g. --query schools")
    return q


def check_engines(reasoner: str, segmenter: str) -> dict[str, str]:
    """Engine specs parsed and their local files checked; returns {option: file} of the local model
    files, which are inputs too."""
    from .engines import parse_reasoner, parse_segmenter
    from .hub import check_model_folder, looks_local

    files: dict[str, str] = {}
    r = parse_reasoner(reasoner)
    if r.kind == "mapreader" and r.args:
        from .reasoners.mapreader import check_legend
        check_legend(r.args[0])
        files["--reasoner"] = r.args[0]
    elif r.kind == "qwen":
        from .hub import training_output
        from .reasoners.qwen import MODEL_TYPES
        base, _adapter = training_output(r.args[0])     # a training run's folder stands for its model
        if looks_local(base):
            check_model_folder(os.path.expanduser(base), "vision-language reasoner", "--reasoner qwen:DIR",
                               MODEL_TYPES)
    elif r.kind == "sam3-concept" and looks_local(r.args[0]):
        from .reasoners.sam3_concept import MODEL_TYPES
        check_model_folder(os.path.expanduser(r.args[0]), "SAM 3 concept reasoner", "--reasoner sam3-concept:DIR",
                           MODEL_TYPES)
    s = parse_segmenter(segmenter)
    if s.kind == "sam2" and looks_local(s.args[0]):
        from .segmenters.sam2 import MODEL_TYPES
        check_model_folder(os.path.expanduser(s.args[0]), "SAM 2 segmenter", "--segmenter sam2:DIR", MODEL_TYPES)
    elif s.kind == "sam3" and looks_local(s.args[0]):
        from .segmenters.sam3 import MODEL_TYPES
        check_model_folder(os.path.expanduser(s.args[0]), "SAM 3 segmenter", "--segmenter sam3:DIR", MODEL_TYPES)
    elif s.kind == "sam":
        checkpoint = s.args[1]
        if not os.path.isfile(checkpoint):
            raise InputError(f"SAM checkpoint {checkpoint} not found: pass an existing file with "
                             "--segmenter sam:MODEL_TYPE:CHECKPOINT")
        files["--segmenter"] = checkpoint
    return files

"""The reliability sweep (issue 10): bad inputs and faults a hostile-but-realistic user meets.

Every case runs `python -m backend detect` in process on real files (the sample town, the Porto scene,
real tiny models, a real full or read-only tmpfs) and asserts the exit code, that the message names
the option or file and the fix, that it recommends only options that exist, and that every file that
existed before the run is byte-identical afterwards (and, for a refusal, that nothing new appeared).
"""
import hashlib
import os
import re
import shutil
import subprocess
from contextlib import contextmanager

import numpy as np
import pyogrio
import pytest
import shapely
from rasterio.crs import CRS

from backend.cli import build_parser, main
from backend.output.vectors import write_entities
from backend.resources import SAMPLE_DIR

PORTO = "/work/shared/realdata/porto"
SMALL_BBOX = ["499800", "4056700", "500400", "4057200"]      # one tile of the sample town, in EPSG:32650


def _options() -> set[str]:
    opts = set()
    for action in build_parser()._subparsers._group_actions[0].choices["detect"]._actions:
        opts.update(o for o in action.option_strings if o.startswith("--"))
    return opts


OPTIONS = _options()


def snapshot(root) -> dict[str, str]:
    out = {}
    for dirpath, dirnames, files in os.walk(root):
        for name in files + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            p = os.path.join(dirpath, name)
            with open(p, "rb") as f:
                out[os.path.relpath(p, root)] = hashlib.sha256(f.read()).hexdigest()
        for d in dirnames:
            out.setdefault(os.path.relpath(os.path.join(dirpath, d), root) + "/", "dir")
    return out


@contextmanager
def tmpfs(path, size: str, readonly: bool = False):
    """A real small file system; skipped where mounting is not permitted."""
    os.makedirs(path, exist_ok=True)
    opts = f"size={size}" + (",ro" if readonly else "")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode}): needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(folder, leave: int = 0) -> None:
    """Fill a file system to the last byte, then free `leave` bytes again."""
    fd = os.open(os.path.join(folder, "filler"), os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    if leave:
        size = os.path.getsize(os.path.join(folder, "filler"))
        os.truncate(os.path.join(folder, "filler"), max(0, size - leave))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Inputs users have: the sample town, a copy of its files damaged or changed, tiny real models."""
    w = tmp_path_factory.mktemp("world")
    for name in ("satellite.tif", "map.tif", "map.gpkg", "truth.gpkg"):
        shutil.copy(os.path.join(SAMPLE_DIR, name), w / name)
    for name in ("satellite.tif", "map.tif"):
        data = (w / name).read_bytes()
        (w / f"truncated_{name}").write_bytes(data[: len(data) // 2])
    (w / "places.csv").write_text("name,lon,lat\nLotus Park,117.1,36.6\n")
    (w / "bad_legend.json").write_text('{"colours": ')
    (w / "legend_no_colours.json").write_text('{"name": "mine"}')
    # The sample's map without any names (a land-use extract, say).
    meta, _, wkb, fields = pyogrio.raw.read(str(w / "map.gpkg"), layer="areas")
    keep = [i for i, n in enumerate(meta["fields"]) if n != "name"]
    pyogrio.raw.write(str(w / "unnamed.gpkg"), wkb, [fields[i] for i in keep], [meta["fields"][i] for i in keep],
                      driver="GPKG", crs=meta["crs"], geometry_type="Polygon", layer="areas")
    pyogrio.raw.write(str(w / "map_areas.shp"), wkb, list(fields), list(meta["fields"]), driver="ESRI Shapefile",
                      crs=meta["crs"], geometry_type="Polygon")
    os.symlink(w / "map.gpkg", w / "link_to_map.gpkg")
    (w / "existing.png").write_bytes(b"an earlier preview")
    (w / "a_file").write_bytes(b"not a folder")
    (w / "old_dump" / "tile_0_0").mkdir(parents=True)
    (w / "old_dump" / "tile_0_0" / "tile.json").write_text("{}")
    (w / "empty_model").mkdir()
    # Real tiny models, saved the way real ones are.
    from backend.selftest.tiny import build_tiny_sam, build_tiny_sam2, build_tiny_vlm
    for name, build in (("sam2", build_tiny_sam2), ("vlm", build_tiny_vlm)):
        model, proc = build()
        model.save_pretrained(w / name)
        proc.save_pretrained(w / name)
        shutil.copytree(w / name, w / f"{name}_truncated")
        st = w / f"{name}_truncated" / "model.safetensors"
        st.write_bytes(st.read_bytes()[: st.stat().st_size // 2])
    build_tiny_sam(str(w / "sam_tiny.pth"))
    (w / "sam_truncated.pth").write_bytes((w / "sam_tiny.pth").read_bytes()[:5_000_000])
    return w


def sample_args(w, *extra, out="out.gpkg", sat="satellite.tif", map_="map.gpkg"):
    return ["detect", "--satellite", str(w / sat), "--map", str(w / map_), "--query", "schools",
            "--out", out if os.path.isabs(out) else str(w / out), *extra]


# (id, argv builder, exit code, regexes the message must match, strings it must not contain)
CASES = [
    ("bbox-nan", lambda w: sample_args(w, "--bbox", "nan", "0", "1", "1"), 2, [r"--bbox", r"finite"], []),
    ("bbox-empty", lambda w: sample_args(w, "--bbox", "500400", "4056700", "499800", "4057200"), 2,
     [r"--bbox .* empty", r"MINX MINY MAXX MAXY"], []),
    ("bbox-lonlat-in-projected-crs",
     lambda w: ["detect", "--satellite", f"{PORTO}/satellite.tif", "--map", f"{PORTO}/map_carto.tif", "--query",
                "schools", "--out", str(w / "out.gpkg"), "--bbox", "-8.615", "41.145", "-8.610", "41.150"],
     2, [r"does not intersect", r"--bbox-crs EPSG:4326"], []),
    ("resolution-1e6", lambda w: sample_args(w, "--resolution", "1e6"), 2,
     [r"--resolution 1e\+06", r"finer resolution"], []),
    ("one-degree-per-pixel", lambda w: sample_args(w, "--crs", "EPSG:4326", "--resolution", "1"), 2,
     [r"--resolution 1 degrees/px", r"1 m is 8\.98e-06 degrees"], []),
    ("resolution-negative", lambda w: sample_args(w, "--resolution", "-2"), 2, [r"--resolution must be positive|"
                                                                                r"--resolution must be a positive"], []),
    ("csv-as-map", lambda w: sample_args(w, map_="places.csv"), 2, [r"places\.csv is a table \(CSV\)"], []),
    ("truncated-satellite", lambda w: sample_args(w, sat="truncated_satellite.tif"), 2,
     [r"truncated_satellite\.tif", r"damaged, truncated"], []),
    ("truncated-map", lambda w: sample_args(w, map_="truncated_map.tif"), 2,
     [r"truncated_map\.tif", r"damaged, truncated"], []),
    ("missing-satellite", lambda w: sample_args(w, sat="nope.tif"), 2, [r"--satellite .*nope\.tif.* does not exist"], []),
    ("out-is-a-folder", lambda w: sample_args(w, out=str(w / "old_dump")), 2, [r"--out .*old_dump is a folder"], []),
    ("out-under-a-file", lambda w: sample_args(w, out=str(w / "a_file" / "out.gpkg")), 2,
     [r"a_file is a file, not a folder", r"choose another --out"], []),
    ("out-bad-extension", lambda w: sample_args(w, out="out.kmz"), 2, [r"\.gpkg, \.shp or \.geojson"], []),
    ("out-is-the-map", lambda w: sample_args(w, "--overwrite", out="map.gpkg"), 2,
     [r"--out .*map\.gpkg is the --map input", r"Choose another --out"], ["--overwrite"]),
    ("out-is-the-map-no-overwrite", lambda w: sample_args(w, out="map.gpkg"), 2,
     [r"is the --map input"], ["--overwrite"]),
    ("out-links-to-the-map", lambda w: sample_args(w, "--overwrite", out="link_to_map.gpkg"), 2,
     [r"is the --map input"], ["--overwrite"]),
    ("out-is-the-shapefile-map", lambda w: sample_args(w, "--overwrite", out="map_areas.shp", map_="map_areas.shp"), 2,
     [r"is the --map input"], []),
    ("out-is-the-truth", lambda w: sample_args(w, "--overwrite", "--truth", str(w / "truth.gpkg"), out="truth.gpkg"),
     2, [r"is the --truth input"], []),
    ("truth-not-a-vector-file", lambda w: sample_args(w, "--truth", str(w / "truncated_map.tif")), 2,
     [r"--truth .*truncated_map\.tif is not a vector file"], []),
    ("preview-exists", lambda w: sample_args(w, "--preview", str(w / "existing.png")), 2,
     [r"existing\.png exists; pass --overwrite", r"--preview"], []),
    ("preview-is-the-satellite", lambda w: sample_args(w, "--overwrite", "--preview", str(w / "satellite.tif")), 2,
     [r"--preview .*satellite\.tif is the --satellite input"], ["--overwrite"]),
    ("preview-unknown-extension", lambda w: sample_args(w, "--preview", str(w / "p.xyz")), 2,
     [r"--preview .*p\.xyz", r"\.png"], []),
    ("preview-equals-out", lambda w: sample_args(w, "--preview", str(w / "same.gpkg"), out="same.gpkg"), 2,
     [r"--out and --preview name the same file|--preview .*cannot tell"], []),
    ("dump-is-a-file", lambda w: sample_args(w, "--dump", str(w / "a_file")), 2, [r"--dump .*a_file is a file"], []),
    ("dump-holds-a-dump", lambda w: sample_args(w, "--dump", str(w / "old_dump")), 2,
     [r"--dump .*old_dump already holds a dump", r"--overwrite"], []),
    ("empty-query", lambda w: sample_args(w)[:6] + ["   "] + sample_args(w)[7:], 2, [r"--query is empty"], []),
    ("negative-temperature", lambda w: sample_args(w, "--temperature", "-1"), 2,
     [r"--temperature", r"-1"], []),
    ("legend-missing", lambda w: sample_args(w, "--reasoner", f"mapreader:{w / 'nope.json'}", map_="map.tif"), 2,
     [r"nope\.json", r"mapreader:LEGEND\.json"], []),
    ("legend-malformed", lambda w: sample_args(w, "--reasoner", f"mapreader:{w / 'bad_legend.json'}", map_="map.tif"),
     2, [r"bad_legend\.json", r"JSON"], []),
    ("legend-without-colours",
     lambda w: sample_args(w, "--reasoner", f"mapreader:{w / 'legend_no_colours.json'}", map_="map.tif"), 2,
     [r"legend_no_colours\.json", r"colours"], []),
    ("name-query-on-a-map-without-names",
     lambda w: ["detect", "--satellite", str(w / "satellite.tif"), "--map", str(w / "unnamed.gpkg"), "--query",
                "Lotus Park", "--task", "name", "--out", str(w / "out.gpkg")], 2, [r"this map has no names"], []),
    ("name-query-on-a-raster-map",
     lambda w: ["detect", "--satellite", str(w / "satellite.tif"), "--map", str(w / "map.tif"), "--query",
                "Lotus Park", "--task", "name", "--out", str(w / "out.gpkg")], 2, [r"vector map"], []),
    ("sam2-folder-of-another-model", lambda w: sample_args(w, "--segmenter", f"sam2:{w / 'vlm'}"), 2,
     [r"holds a qwen2_5_vl model, not sam2", r"--segmenter sam2:DIR"], []),
    ("qwen-folder-of-another-model", lambda w: sample_args(w, "--reasoner", f"qwen:{w / 'sam2'}"), 2,
     [r"holds a sam2 model, not qwen2_5_vl"], []),
    ("sam2-truncated-safetensors", lambda w: sample_args(w, "--segmenter", f"sam2:{w / 'sam2_truncated'}"), 2,
     [r"sam2_truncated/model\.safetensors is damaged or truncated"], []),
    ("qwen-truncated-safetensors", lambda w: sample_args(w, "--reasoner", f"qwen:{w / 'vlm_truncated'}"), 2,
     [r"vlm_truncated/model\.safetensors is damaged or truncated"], []),
    ("sam-checkpoint-truncated", lambda w: sample_args(w, "--segmenter", f"sam:vit_tiny:{w / 'sam_truncated.pth'}"), 2,
     [r"sam_truncated\.pth is damaged, truncated"], []),
    ("empty-model-folder", lambda w: sample_args(w, "--segmenter", f"sam2:{w / 'empty_model'}"), 2,
     [r"empty_model has no config\.json \(it is empty\)"], ["huggingface-cli download /"]),
    ("relative-model-path-missing", lambda w: sample_args(w, "--reasoner", "qwen:./models/none"), 2,
     [r"folder \./models/none not found"], ["Repo id"]),
    ("deep-relative-model-path-missing", lambda w: sample_args(w, "--segmenter", "sam2:models/sam2/large"), 2,
     [r"folder models/sam2/large not found"], ["Repo id"]),
    ("hub-id-offline", lambda w: sample_args(w, "--segmenter", "sam2:someone/not-cached"), 2,
     [r"'someone/not-cached' is not a folder here and not in the Hugging Face cache", r"HF_HUB_OFFLINE"], []),
    ("sam-checkpoint-of-another-size", lambda w: sample_args(w, "--segmenter", f"sam:vit_b:{w / 'sam_tiny.pth'}"), 2,
     [r"sam_tiny\.pth is a vit_tiny model, not vit_b", r"--segmenter sam:vit_tiny:"], []),
    ("sam-checkpoint-missing", lambda w: sample_args(w, "--segmenter", f"sam:vit_b:{w / 'none.pth'}"), 2,
     [r"none\.pth not found"], []),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_sweep(case, world, capsys):
    _, argv, code, wanted, unwanted = case
    before = snapshot(world)
    rc = main(argv(world))
    err = capsys.readouterr().err
    message = err.strip().splitlines()[-1] if err.strip() else ""
    assert rc == code, err
    assert "Traceback" not in err and "internal error" not in err
    for pattern in wanted:
        assert re.search(pattern, message), (pattern, message)
    for text in unwanted:
        assert text not in message, (text, message)
    ours = re.sub(r"`[^`]*`", "", message)       # other tools' commands (huggingface-cli ...) aside
    assert set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", ours)) <= OPTIONS, message   # no made-up flags
    assert snapshot(world) == before      # nothing changed, nothing left behind


def test_checks_come_before_the_work(world, capsys):
    """Writability, consent and option errors are found before rasters are read or models loaded."""
    for argv in (sample_args(world, "--preview", str(world / "existing.png")),
                 sample_args(world, "--top-p", "2")):
        assert main(argv) == 2
        assert "grid:" not in capsys.readouterr().err


def test_hub_unreachable_fails_fast(world, capsys, monkeypatch):
    """Without HF_HUB_OFFLINE a machine with no route to the hub answers in seconds, not minutes."""
    import time
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")    # discard port: nothing listens
    t = time.perf_counter()
    assert main(sample_args(world, "--segmenter", "sam2:someone/not-cached")) == 2
    assert time.perf_counter() - t < 30
    assert "cannot be reached (127.0.0.1:9)" in capsys.readouterr().err


def test_read_only_output_folder_is_refused_before_the_work(world, tmp_path, capsys):
    with tmpfs(tmp_path / "ro", "64k", readonly=True) as ro:
        rc = main(sample_args(world, out=str(ro / "out.gpkg")))
        err = capsys.readouterr().err
    assert rc == 2 and "read-only file system" in err and "Choose another --out" in err
    assert "grid:" not in err


def _existing_result(path: str) -> None:
    poly = shapely.box(499_900, 4_056_800, 500_000, 4_056_900)
    attrs = {"query": "schools", "task": "class", "name": "kept", "tiles": "tile_0_0", "refined": True}
    write_entities(path, [poly], [attrs], CRS.from_epsg(32650))


@pytest.mark.parametrize("ext", [".gpkg", ".shp", ".geojson"])
def test_disk_full_keeps_the_old_output_and_says_disk_full(world, tmp_path, capsys, ext):
    with tmpfs(tmp_path / "full", "512k") as disk:
        out = str(disk / f"result{ext}")
        _existing_result(out)
        fill(disk)
        before = snapshot(disk)
        rc = main(sample_args(world, "--overwrite", "--bbox", *SMALL_BBOX, out=out))
        err = capsys.readouterr().err
        after = snapshot(disk)
    assert rc == 2, err
    assert "disk full" in err and "result" + ext in err and "Traceback" not in err
    # The old result byte-identical, no temporary files left; the finished-tiles folder beside the
    # output is kept on purpose (for --resume).
    assert {k: v for k, v in after.items() if not k.startswith(f"result{ext}.tiles")} == before


@pytest.mark.parametrize("leave", [0, 8192], ids=["full", "nearly-full"])
@pytest.mark.parametrize("ext", [".gpkg", ".shp", ".geojson"])
def test_writer_on_a_full_disk_says_so_and_keeps_the_old_file(tmp_path, ext, leave):
    """Nearly full, GDAL reports a Shapefile as written and leaves 0-byte .shp/.shx/.dbf: reading the
    new file back before it replaces anything is what catches that."""
    from backend.errors import InputError

    polys = [shapely.box(499_900 + 30 * i, 4_056_800, 499_920 + 30 * i, 4_056_900) for i in range(3)]
    attrs = [{"query": "schools", "name": f"new {i}", "refined": True} for i in range(3)]
    with tmpfs(tmp_path / "full", "512k") as disk:
        out = str(disk / f"result{ext}")
        _existing_result(out)
        fill(disk, leave)
        before = snapshot(disk)
        try:
            write_entities(out, polys, attrs, CRS.from_epsg(32650), overwrite=True)
        except InputError as exc:
            assert re.match(r"disk full: cannot write .*result" + re.escape(ext), str(exc))
            assert snapshot(disk) == before
        else:       # it fitted: then it must be whole (a small GeoJSON fits in the last pages)
            assert leave and pyogrio.read_info(out, force_feature_count=True)["features"] == 3
            assert ext == ".geojson"     # a Shapefile's five parts and a GeoPackage never fit here


def test_disk_full_while_writing_the_preview_keeps_the_old_preview(world, tmp_path, capsys):
    with tmpfs(tmp_path / "full", "512k") as disk:
        png = disk / "preview.png"
        png.write_bytes(b"earlier preview")
        fill(disk)
        before = snapshot(disk)
        rc = main(sample_args(world, "--overwrite", "--bbox", *SMALL_BBOX, "--preview", str(png),
                              out=str(world / "preview_run.gpkg")))
        err = capsys.readouterr().err
        after = snapshot(disk)
    os.remove(world / "preview_run.gpkg")
    assert rc == 2 and "disk full" in err and "preview.png" in err and "preview_run.gpkg was written" in err
    assert after == before


def test_geographic_crs_defaults_to_about_a_metre(world, capsys):
    out = world / "geo.gpkg"
    rc = main(sample_args(world, "--crs", "EPSG:4326", "--bbox", *SMALL_BBOX, "--bbox-crs", "EPSG:32650",
                          out=str(out)))
    err = capsys.readouterr().err
    os.remove(out)
    assert rc == 0, err
    res = float(re.search(r"at ([0-9.e-]+) degrees/px in EPSG:4326", err).group(1))
    assert 8e-6 < res < 1e-5      # 1 m in degrees, not one degree


def test_warnings_stay_off_the_progress_bar(world, capsys):
    out = world / "universities.gpkg"
    rc = main(sample_args(world, out=str(out))[:6] + ["universities"] + sample_args(world, out=str(out))[7:])
    err = capsys.readouterr().err
    os.remove(out)
    assert rc == 0
    k = err.index("WARNING: no map feature matches")
    assert k == 0 or err[k - 1] in "\r\n", repr(err[max(0, k - 80):k + 40])


def test_porto_outputs_never_touch_inputs(tmp_path, capsys):
    """The real city: --out onto its GeoPackage map is refused, the read-only input untouched."""
    gpkg = tmp_path / "map.gpkg"
    shutil.copy(f"{PORTO}/map.gpkg", gpkg)
    digest = hashlib.sha256(gpkg.read_bytes()).hexdigest()
    rc = main(["detect", "--satellite", f"{PORTO}/satellite.tif", "--map", str(gpkg), "--query", "parks",
               "--out", str(gpkg), "--overwrite"])
    assert rc == 2 and "is the --map input" in capsys.readouterr().err
    assert hashlib.sha256(gpkg.read_bytes()).hexdigest() == digest
    assert np.array_equal(sorted(os.listdir(tmp_path)), ["map.gpkg"])

"""Areas of any size: tile windows read from the files, seams merged in a band, runs resumed."""
import os

import numpy as np
import pytest
import shapely

from backend.errors import Cancelled, InputError
from backend.geo import grid as geo
from backend.geo.maprender import render_map
from backend.geo.tiles import estimate_seconds, tile_layout
from backend.geo.window import GridRaster, MapWindows
from backend.pipeline.detect import detect, drop_small, load_scene, vectorise
from backend.pipeline.resume import TileStore, remove_tiles
from backend.pipeline.seams import BandMerger, TileRecord
from backend.reasoners.mapreader import MapReader
from helpers import FillBoxSegmenter


def _sample_grid(sample_dir, resolution):
    crs, bounds = geo.raster_footprint(os.path.join(sample_dir, "satellite.tif"))
    return geo.plan_grid([(crs, bounds), geo.raster_footprint(os.path.join(sample_dir, "map.tif"))],
                         resolution=resolution)


def test_a_window_is_exactly_those_pixels_of_the_whole_grid(sample_dir):
    grid = _sample_grid(sample_dir, 2.0)            # the map is in EPSG:3857, the grid in UTM 50N
    for name in ("satellite.tif", "map.tif"):
        whole, valid = geo.read_on_grid(os.path.join(sample_dir, name), grid)
        src = GridRaster(os.path.join(sample_dir, name), grid)
        try:
            for t in tile_layout(grid.width, grid.height, 256, 64):
                rgb, v = src.read(t.x0, t.y0, t.width, t.height)
                assert np.array_equal(rgb, whole[t.slices]), (name, t.id)
                assert np.array_equal(v, valid[t.slices])
        finally:
            src.close()


def test_a_vector_map_window_renders_as_the_whole_map(sample_dir):
    from backend.geo.vectormap import VectorMap

    grid = _sample_grid(sample_dir, 2.0)
    vmap = VectorMap.read(os.path.join(sample_dir, "map.gpkg"), grid.crs)
    whole = render_map(vmap.features, grid)
    windows = MapWindows(vmap.features, grid)
    for t in tile_layout(grid.width, grid.height, 256, 64):
        rgb, _ = windows.read(t.x0, t.y0, t.width, t.height)
        assert np.array_equal(rgb, whole[t.slices]), t.id


def _blobs(rng, shape, n):
    h, w = shape
    m = np.zeros(shape, bool)
    for _ in range(n):
        y, x = rng.integers(0, h), rng.integers(0, w)
        m[max(0, y - rng.integers(1, 40)):y + rng.integers(1, 40), max(0, x - rng.integers(1, 40)):x + rng.integers(1, 40)] = True
    return m


def test_band_merge_gives_the_whole_area_merge(sample_dir):
    """Random places on a 5 x 4 tile layout, one snaking across every tile row, holes, specks below
    the minimum area: the band gives the same polygons, order and attributes as the whole mask."""
    grid = geo.Grid(geo.parse_crs("EPSG:32650"), geo.Affine(0.5, 0, 500_000, 0, -0.5, 4_057_000), 900, 700)
    tiles = tile_layout(grid.width, grid.height, 256, 48)
    rng = np.random.default_rng(3)
    snake = np.zeros((grid.height, grid.width), bool)
    snake[:, 400:412] = True                    # from the top row of tiles to the bottom one
    snake[300:320, 100:700] = True
    snake[305:315, 300:500] = False             # a hole
    records = []
    for t in tiles:
        m = _blobs(rng, (t.height, t.width), 4) | snake[t.slices]
        names = [(m & _blobs(rng, m.shape, 2), f"place {t.id}")]
        records.append(TileRecord(t, m, names, [0.5 + 0.01 * t.col], [f"note {t.row}"], t.row, t.col, t.col != 2))
    mosaic = np.zeros((grid.height, grid.width), bool)
    for r in records:
        mosaic[r.tile.slices] |= r.mask
    want = vectorise(drop_small(mosaic, grid, 20.0), grid, records, "q", "class", "r", "s")
    merger = BandMerger(grid, tiles, "q", "class", "r", "s", min_area_m2=20.0, keep_mask=True)
    for i in rng.permutation(len(records)):      # out of order, as threads finish
        merger.add(records[i])
    got = merger.finish()
    assert len(got) == len(want) > 10
    for g, w in zip(got, want):
        assert g.geometry.equals_exact(w.geometry, 0)
        assert {k: v for k, v in g.attrs.items() if k != "created"} == \
               {k: v for k, v in w.attrs.items() if k != "created"}
    assert np.array_equal(merger.mask, drop_small(mosaic, grid, 20.0))
    assert any("," in e.attrs["tiles"] and e.attrs["name"] for e in got)
    snaking = BandMerger(grid, tiles, "q", None, "r", "s")
    heights, open_rows = [], []
    for r in records:                          # in order, as a sequential run adds them
        snaking.add(r)
        heights.append(len(snaking.band))
        open_rows.append(max((m.shape[0] for _, _, m in snaking.pieces), default=0))
    assert len(snaking.finish()) == len(got)
    assert max(heights) <= 256                 # full-width rows: never more than a tile's height ...
    assert max(open_rows) >= 400               # ... while the snake waits, cropped, for its end


def test_a_cancelled_run_resumes_to_the_uninterrupted_result(sample_dir, tmp_path):
    sat, mp = os.path.join(sample_dir, "satellite.tif"), os.path.join(sample_dir, "map.gpkg")
    scene = load_scene(sat, mp, resolution=1.0, tile_size=512, overlap=64)
    assert len(scene.tiles) >= 9
    full = detect(scene, "schools", MapReader(), FillBoxSegmenter())
    store = str(tmp_path / "out.gpkg.tiles")

    def after(n):
        return lambda: len([f for f in os.listdir(store) if f.endswith(".npz")]) >= n

    with pytest.raises(Cancelled):
        detect(scene, "schools", MapReader(), FillBoxSegmenter(), cancel=after(4), tiles_dir=store)
    kept = sorted(f for f in os.listdir(store) if f.endswith(".npz"))
    assert len(kept) == 4 and not any(".part" in f for f in os.listdir(store))

    with pytest.raises(InputError, match="--resume"):       # without --resume the work is not thrown away
        detect(scene, "schools", MapReader(), FillBoxSegmenter(), tiles_dir=store)
    with pytest.raises(InputError, match="query differ"):
        detect(scene, "parks", MapReader(), FillBoxSegmenter(), tiles_dir=store, resume=True)

    computed = []
    reader = MapReader()
    stage1 = reader.stage1

    def counting(view, *a, **k):
        computed.append(view.tile_id)
        return stage1(view, *a, **k)

    reader.stage1 = counting
    resumed = detect(scene, "schools", reader, FillBoxSegmenter(), tiles_dir=store, resume=True)
    assert resumed.resumed == 4
    assert sorted(computed) == sorted(t.id for t in scene.tiles if t.id + ".npz" not in kept)
    assert len(resumed.entities) == len(full.entities) > 0
    for a, b in zip(resumed.entities, full.entities):
        assert a.geometry.equals_exact(b.geometry, 0)
        assert {k: v for k, v in a.attrs.items() if k != "created"} == \
               {k: v for k, v in b.attrs.items() if k != "created"}
    remove_tiles(store)
    assert not os.path.exists(store)


def test_a_folder_that_is_not_ours_is_left_alone(tmp_path):
    folder = tmp_path / "out.gpkg.tiles"
    folder.mkdir()
    (folder / "mine.txt").write_text("x")
    with pytest.raises(InputError, match="not a tile folder"):
        TileStore(str(folder), {"a": 1}, resume=True)
    remove_tiles(str(folder))
    assert (folder / "mine.txt").exists()


def test_the_estimate_is_per_tile_and_absent_where_unmeasured():
    assert estimate_seconds(100, "mapreader") == pytest.approx(100 * estimate_seconds(1, "mapreader"))
    assert estimate_seconds(10, "qwen") is None
    big = tile_layout(640 * 40 + 128, 640 * 40 + 128)       # 1,600 tiles: no longer refused by default
    assert len(big) == 1600

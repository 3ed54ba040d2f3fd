"""--truth and --preview on a large area look at every k-th pixel (bounded memory on the driver):
the sampled grid, mask and images are the full-resolution ones sliced [::k, ::k], exactly."""
import os
import re

import numpy as np
import pytest
import rasterio.features
import shapely
from affine import Affine
from rasterio.crs import CRS

from backend.cli import main
from backend.geo import base as geo_base
from backend.geo.base import Grid, sample_step, sampled_grid
from backend.pipeline.detect import detect, load_scene
from backend.reasoners.mapreader import MapReader
from helpers import FillBoxSegmenter


@pytest.mark.parametrize("crs,origin,res", [("EPSG:32629", (532000.0, 4556000.0), 0.5),
                                            ("EPSG:4326", (-8.62, 41.15), 0.00001)])
@pytest.mark.parametrize("k", [2, 3, 7])
def test_a_raster_on_the_sampled_grid_is_the_full_raster_sliced(crs, origin, res, k):
    grid = Grid(CRS.from_string(crs), Affine(res, 0, origin[0], 0, -res, origin[1]), 301, 203)
    x0, y1 = origin
    rng = np.random.default_rng(k)
    shape = shapely.Polygon([(x0 + res * px, y1 - res * py) for px, py in rng.uniform(0, 200, (7, 2))]).convex_hull
    full = rasterio.features.rasterize([shape], (grid.height, grid.width), transform=grid.transform)
    g = sampled_grid(grid, k)
    small = rasterio.features.rasterize([shape], (g.height, g.width), transform=g.transform)
    assert small.any() and np.array_equal(small, full[::k, ::k])
    # pixel (j, i) of the sampled grid has the centre of the full grid's pixel (j*k, i*k)
    assert g.transform * (3.5, 2.5) == pytest.approx(grid.transform * (3 * k + 0.5, 2 * k + 0.5))


def test_the_step_is_the_smallest_that_fits():
    grid = Grid(CRS.from_epsg(32629), Affine(1, 0, 0, 0, -1, 0), 1000, 1000)
    assert sample_step(grid, 10 ** 6) == 1
    assert sample_step(grid, 10 ** 6 - 1) == 2
    assert sample_step(grid, 100 * 100) == 10
    assert sample_step(grid, 100 * 100 - 1) == 11


@pytest.mark.parametrize("k", [2, 3])
def test_the_merged_mask_and_the_scene_at_every_kth_pixel(sample_dir, k):
    scene = load_scene(os.path.join(sample_dir, "satellite.tif"), os.path.join(sample_dir, "map.gpkg"),
                       resolution=1.0, tile_size=512, overlap=64)
    full = detect(scene, "schools", MapReader(), FillBoxSegmenter(), keep_mask=True)
    small = detect(scene, "schools", MapReader(), FillBoxSegmenter(), keep_mask=k)
    assert full.mask.any() and np.array_equal(small.mask, full.mask[::k, ::k])
    whole, sampled = scene.whole(), scene.sampled(k, block=100)      # several windows per side
    for a, b in zip(whole, sampled):
        assert np.array_equal(b, a[::k, ::k])


def test_the_cli_says_when_it_scores_and_previews_a_sample(sample_dir, tmp_path, capsys, monkeypatch):
    args = ["detect", "--satellite", os.path.join(sample_dir, "satellite.tif"), "--map",
            os.path.join(sample_dir, "map.gpkg"), "--query", "schools", "--truth",
            os.path.join(sample_dir, "truth.gpkg"), "--overwrite"]
    assert main(args + ["--out", str(tmp_path / "a.gpkg"), "--preview", str(tmp_path / "a.png")]) == 0
    exact = float(re.search(r"IoU against .*: ([\d.]+)", capsys.readouterr().out).group(1))
    monkeypatch.setattr(geo_base, "WHOLE_AREA_MAX_PIXELS", 500 * 500)
    assert main(args + ["--out", str(tmp_path / "b.gpkg"), "--preview", str(tmp_path / "b.png")]) == 0
    out = capsys.readouterr().out
    m = re.search(r"IoU against .*: ([\d.]+) .*on 1 pixel in (\d) x \d, as the area has more than 250,000", out)
    assert m, out
    assert int(m.group(2)) >= 2 and abs(float(m.group(1)) - exact) < 0.01
    from PIL import Image
    assert Image.open(tmp_path / "b.png").width < Image.open(tmp_path / "a.png").width

"""Georeferencing exactness: pixels to map coordinates in several CRSs, rasters in different CRSs."""
import numpy as np
import pytest
import shapely
from affine import Affine
from pyproj import Transformer
from rasterio.crs import CRS

from backend.geo import grid as geo
from backend.pipeline.detect import detect, load_scene, vectorise
from backend.errors import InputError
from backend.reasoners.mapreader import MapReader
from helpers import FillBoxSegmenter, ScriptedReasoner, write_raster


@pytest.mark.parametrize("epsg,origin,res", [
    (4326, (117.0, 36.7), 1e-5),            # geographic: degrees
    (3857, (13_024_380.0, 4_396_000.0), 1.25),
    (32650, (500_000.0, 4_057_000.0), 2.0),  # UTM 50N
])
def test_known_mask_lands_on_known_coordinates(epsg, origin, res):
    grid = geo.Grid(CRS.from_epsg(epsg), Affine(res, 0, origin[0], 0, -res, origin[1]), 100, 80)
    mask = np.zeros((80, 100), bool)
    mask[10:20, 20:30] = True          # rows 10..19, cols 20..29
    mask[50:70, 60:90] = True
    mask[55:60, 70:75] = False         # a hole, which must be kept
    ents = vectorise(mask, grid, [], "q", None, "r", "s")
    assert len(ents) == 2
    bounds = sorted(e.geometry.bounds for e in ents)
    x0, y0 = origin
    expected = sorted([(x0 + 20 * res, y0 - 20 * res, x0 + 30 * res, y0 - 10 * res),
                       (x0 + 60 * res, y0 - 70 * res, x0 + 90 * res, y0 - 50 * res)])
    for got, want in zip(bounds, expected):
        assert got == pytest.approx(want, abs=res * 1e-6)
    holed = [e for e in ents if len(e.geometry.interiors) == 1]
    assert len(holed) == 1
    assert holed[0].geometry.area == pytest.approx((600 - 25) * res * res, rel=1e-9)


def test_area_attribute_is_geodesic_in_every_crs():
    from backend.output.vectors import geodesic_area_m2
    sq = shapely.box(500_000, 4_057_000, 500_100, 4_057_100)
    a_utm = geodesic_area_m2(sq, CRS.from_epsg(32650))
    tr = Transformer.from_crs(32650, 4326, always_xy=True)
    sq_ll = shapely.transform(sq, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))
    assert a_utm == pytest.approx(10_000, rel=2e-3)          # UTM scale factor ~0.9996
    assert geodesic_area_m2(sq_ll, CRS.from_epsg(4326)) == pytest.approx(a_utm, rel=1e-4)


def _two_crs_scene(tmp_path, lonlat_box):
    """Satellite in EPSG:4326, map in EPSG:3857, both showing one park at `lonlat_box`."""
    lon0, lat0, lon1, lat1 = 116.995, 36.645, 117.005, 36.655
    res_deg = 1e-5
    w, h = int(round((lon1 - lon0) / res_deg)), int(round((lat1 - lat0) / res_deg))
    sat = np.full((h, w, 3), 120, np.uint8)
    c0, r0 = ~Affine(res_deg, 0, lon0, 0, -res_deg, lat1) * (lonlat_box[0], lonlat_box[3])
    c1, r1 = ~Affine(res_deg, 0, lon0, 0, -res_deg, lat1) * (lonlat_box[2], lonlat_box[1])
    sat[int(r0):int(r1), int(c0):int(c1)] = (60, 150, 60)
    write_raster(tmp_path / "sat.tif", sat, "EPSG:4326", Affine(res_deg, 0, lon0, 0, -res_deg, lat1))
    tr = Transformer.from_crs(4326, 3857, always_xy=True)
    mx0, my0 = tr.transform(lon0, lat0)
    mx1, my1 = tr.transform(lon1, lat1)
    mres = 1.3
    mw, mh = int((mx1 - mx0) / mres), int((my1 - my0) / mres)
    mp = np.full((mh, mw, 3), (242, 239, 233), np.uint8)
    bx0, by0 = tr.transform(lonlat_box[0], lonlat_box[1])
    bx1, by1 = tr.transform(lonlat_box[2], lonlat_box[3])
    mt = Affine(mres, 0, mx0, 0, -mres, my1)
    (pc0, pr0), (pc1, pr1) = ~mt * (bx0, by1), ~mt * (bx1, by0)
    mp[int(round(pr0)):int(round(pr1)), int(round(pc0)):int(round(pc1))] = (0xC8, 0xFA, 0xCC)
    write_raster(tmp_path / "map.tif", mp, "EPSG:3857", mt)
    return str(tmp_path / "sat.tif"), str(tmp_path / "map.tif")


def test_rasters_in_different_crss_give_a_polygon_in_the_right_place(tmp_path):
    park = (116.9985, 36.6485, 117.0012, 36.6508)        # about 240 x 255 m
    sat, mp = _two_crs_scene(tmp_path, park)
    scene = load_scene(sat, mp, resolution=1.0)
    assert scene.grid.crs == CRS.from_epsg(32650)        # the UTM zone of a geographic satellite
    assert len(scene.tiles) == 4                          # ~894 x 1110 px -> 2 x 2 tiles
    det = detect(scene, "parks", MapReader(), FillBoxSegmenter())
    assert len(det.entities) == 1
    tr = Transformer.from_crs(32650, 4326, always_xy=True)
    g = shapely.transform(det.entities[0].geometry, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))
    lon_m = 1 / (111_320 * np.cos(np.radians(36.65)))    # degrees of longitude per metre
    lat_m = 1 / 110_950
    gb = g.bounds
    assert abs(gb[0] - park[0]) < 2.5 * lon_m and abs(gb[2] - park[2]) < 2.5 * lon_m
    assert abs(gb[1] - park[1]) < 2.5 * lat_m and abs(gb[3] - park[3]) < 2.5 * lat_m


def test_output_crs_and_bbox_in_another_crs(tmp_path):
    park = (116.9985, 36.6485, 117.0012, 36.6508)
    sat, mp = _two_crs_scene(tmp_path, park)
    bbox_ll = (116.998, 36.648, 117.002, 36.652)
    scene = load_scene(sat, mp, crs=CRS.from_epsg(3857), resolution=1.5, bbox=bbox_ll,
                       bbox_crs=CRS.from_epsg(4326))
    tr = Transformer.from_crs(4326, 3857, always_xy=True)
    x0, y0 = tr.transform(bbox_ll[0], bbox_ll[1])
    x1, y1 = tr.transform(bbox_ll[2], bbox_ll[3])
    b = scene.grid.bounds
    assert scene.grid.crs == CRS.from_epsg(3857)
    assert b[0] <= x0 < b[0] + 1.5 and b[3] >= y1 > b[3] - 1.5
    assert b[2] >= x1 - 1.5 and b[1] <= y0 + 1.5


def test_non_overlapping_rasters_are_refused(tmp_path):
    a = write_raster(tmp_path / "a.tif", np.zeros((10, 10, 3), np.uint8), "EPSG:32650", Affine(1, 0, 500_000, 0, -1, 4_057_000))
    b = write_raster(tmp_path / "b.tif", np.zeros((10, 10, 3), np.uint8), "EPSG:32650", Affine(1, 0, 600_000, 0, -1, 4_057_000))
    with pytest.raises(InputError, match="do not overlap"):
        load_scene(str(a), str(b))


def test_no_valid_pixels_is_refused(tmp_path):
    t = Affine(1, 0, 500_000, 0, -1, 4_057_000)
    a = write_raster(tmp_path / "a.tif", np.zeros((50, 50, 3), np.uint8), "EPSG:32650", t, nodata=0)
    b = write_raster(tmp_path / "b.tif", np.full((50, 50, 3), 200, np.uint8), "EPSG:32650", t)
    with pytest.raises(InputError, match="no valid pixels"):
        load_scene(str(a), str(b))


def test_missing_crs_is_refused(tmp_path):
    import rasterio
    p = tmp_path / "plain.tif"
    with rasterio.open(p, "w", driver="GTiff", width=8, height=8, count=3, dtype="uint8") as dst:
        dst.write(np.zeros((3, 8, 8), np.uint8))
    with pytest.raises(InputError, match="no coordinate reference system"):
        geo.raster_footprint(str(p))


def test_tile_layout_covers_and_overlaps():
    tiles = geo.tile_layout(2000, 900, 768, 128)
    cover = np.zeros((900, 2000), int)
    for t in tiles:
        r, c = t.slices
        cover[r, c] += 1
        assert t.width == 768 and t.height == 768
    assert cover.min() >= 1
    assert {t.id for t in tiles} == {f"tile_{r}_{c}" for r in range(2) for c in range(3)}
    small = geo.tile_layout(300, 200)
    assert [(t.width, t.height) for t in small] == [(300, 200)]


def test_absurd_tile_count_names_the_number_and_the_knob():
    with pytest.raises(InputError, match=r"needs 1024 tiles.*--max-tiles"):
        geo.tile_layout(640 * 32 + 128, 640 * 32 + 128, 768, 128, max_tiles=256)


def test_seam_crossing_entity_is_one_polygon(tmp_path):
    t = Affine(1, 0, 500_000, 0, -1, 4_057_000)
    write_raster(tmp_path / "sat.tif", np.full((600, 1400, 3), 100, np.uint8), "EPSG:32650", t)
    write_raster(tmp_path / "map.tif", np.full((600, 1400, 3), 240, np.uint8), "EPSG:32650", t)
    scene = load_scene(str(tmp_path / "sat.tif"), str(tmp_path / "map.tif"))
    assert len(scene.tiles) == 2
    entity = shapely.box(500_500, 4_056_700, 500_900, 4_056_900)   # spans the seam at x = 640..768

    def answer(view):
        inv = ~view.transform
        (c0, r0), (c1, r1) = inv * (entity.bounds[0], entity.bounds[3]), inv * (entity.bounds[2], entity.bounds[1])
        h, w = view.map_image.shape[:2]
        c0, c1 = max(0, c0), min(w, c1)
        if c1 <= c0:
            return "<think>none</think><answer>[]</answer>"
        return f'<think>x</think><answer>[{{"bbox_2d": [{c0:.2f}, {r0:.2f}, {c1 - 1:.2f}, {r1 - 1:.2f}]}}]</answer>'

    det = detect(scene, "anything", ScriptedReasoner(answer), FillBoxSegmenter())
    assert len(det.entities) == 1
    e = det.entities[0]
    assert e.attrs["tiles"] == "tile_0_0,tile_0_1"
    assert e.geometry.symmetric_difference(entity).area < 0.02 * entity.area


@pytest.mark.parametrize("epsg, metre", [(32650, 1.0), (4326, 1 / 111_320), (2263, 1 / 0.3048006096)])
def test_default_resolution_is_about_a_metre_in_the_crs_units(epsg, metre):
    """Metres, degrees and US survey feet: the default pixel is ~1 m on the ground in every CRS."""
    crs = CRS.from_epsg(epsg)
    ll = (116.99, 36.65, 117.01, 36.67) if epsg != 2263 else (-74.01, 40.70, -73.99, 40.72)
    from rasterio.warp import transform_bounds
    bounds = transform_bounds("EPSG:4326", crs, *ll)
    g = geo.plan_grid([(crs, bounds)], crs=crs)
    assert g.resolution == pytest.approx(metre, rel=1e-3)
    assert 1500 < g.width < 2600     # ~1.8-2.2 km at ~1 m per pixel


def test_a_damaged_raster_block_names_the_file(tmp_path):
    t = Affine(1, 0, 500_000, 0, -1, 4_057_000)
    p = write_raster(tmp_path / "sat.tif", np.full((256, 256, 3), 90, np.uint8), "EPSG:32650", t)
    data = p.read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[: len(data) * 2 // 3])
    g = geo.plan_grid([geo.raster_footprint(str(tmp_path / "cut.tif"))])
    with pytest.raises(InputError, match=r"cut\.tif .*damaged, truncated"):
        geo.read_on_grid(str(tmp_path / "cut.tif"), g)

"""The plugin's path on a real map: QGIS renders Porto's genuine OSM Carto render onto the grid, as a
GeoTIFF and as XYZ tiles (the way QGIS shows the standard OpenStreetMap layer), and the worker reads it
(skipped when ../shared/realdata/porto is not beside the checkout)."""
import json
import os

import numpy as np
import pytest
import shapely

qgis_core = pytest.importorskip("qgis.core")
from qgis.core import QgsCoordinateReferenceSystem, QgsProject  # noqa: E402

from helpers import ROOT  # noqa: E402

PORTO = os.path.join(ROOT, "..", "shared", "realdata", "porto")
needs_porto = pytest.mark.skipif(not os.path.isdir(PORTO), reason=f"no real scene at {PORTO}")


@needs_porto
def test_processing_finds_the_cordoaria_parks_on_the_carto_render(plugin_pkg, qgis_processing, qgis_new_project,
                                                                  qgis_iface):
    import processing
    from backend.geo.vectormap import _reproject
    from rasterio.crs import CRS
    plugin = plugin_pkg.classFactory(qgis_iface)
    plugin.initProcessing()
    try:
        QgsProject.instance().setCrs(QgsCoordinateReferenceSystem("EPSG:32629"))
        # Cordoaria (Jardim de João Chagas) and the Virtudes gardens, in UTM 29N
        box = (531980.0, 4554700.0, 532480.0, 4555200.0)
        res = processing.run("socioseg:detect_entities", {
            "SATELLITE": os.path.join(PORTO, "satellite.tif"), "MAP": os.path.join(PORTO, "map_carto.tif"),
            "QUERY": "parks", "EXTENT": f"{box[0]},{box[2]},{box[1]},{box[3]} [EPSG:32629]",
            "RESOLUTION": 1.0, "ENGINE": 0, "OUTPUT": "memory:"})
        layer = res["OUTPUT"]
        found = shapely.union_all([shapely.from_wkt(f.geometry().asWkt()) for f in layer.getFeatures()])
        assert {f["segmenter"] for f in layer.getFeatures()} == {"map/grabcut"}
    finally:
        plugin.unload()
    with open(os.path.join(PORTO, "truth.geojson"), encoding="utf-8") as fh:
        parks = [shapely.geometry.shape(f["geometry"]) for f in json.load(fh)["features"]
                 if f["properties"]["class"] == "park"]
    truth = shapely.union_all(_reproject(np.array(parks, object), CRS.from_epsg(4326), CRS.from_epsg(32629)))
    truth = truth.intersection(shapely.box(*box))
    assert truth.area > 10_000
    iou = found.intersection(truth).area / found.union(truth).area
    assert iou > 0.7, f"IoU {iou:.2f}"


@pytest.fixture(scope="module")
def porto_xyz(tmp_path_factory):
    """Porto's Carto render cut into z17 XYZ tiles (gdal2tiles, nearest), served as QGIS serves the
    standard OpenStreetMap layer: an XYZ layer, here from a file URL."""
    gdal2tiles = pytest.importorskip("osgeo_utils.gdal2tiles")
    out = tmp_path_factory.mktemp("xyz")
    gdal2tiles.main(["gdal2tiles.py", "--xyz", "-z", "16-17", "-r", "near", "-w", "none", "-q",
                     os.path.join(PORTO, "map_carto.tif"), str(out)])
    assert (out / "17").is_dir()
    return f"type=xyz&url=file://{out}/{{z}}/{{x}}/{{y}}.png&zmin=16&zmax=17"


@needs_porto
def test_an_xyz_map_layer_is_captured_at_its_own_pixels(porto_xyz, qgis_new_project, tmp_path):
    # QGIS draws XYZ tiles smoothed where it scales them; the capture renders them 1:1 in Web
    # Mercator and resamples with nearest neighbour, so the map reader sees the render's own colours
    from osgeo import gdal
    from qgis.core import QgsRasterLayer, QgsRectangle
    from socioseg.plugin.capture import plan_grid, render_map_to_geotiff, render_to_geotiff
    layer = QgsRasterLayer(porto_xyz, "OpenStreetMap", "wms")
    assert layer.isValid()
    crs = QgsCoordinateReferenceSystem("EPSG:32629")
    grid = plan_grid(QgsRectangle(532300.0, 4555300.0, 532700.0, 4555700.0), crs, 1.0)
    render_map_to_geotiff([layer], grid, crs, str(tmp_path / "captured.tif"))
    captured = gdal.Open(str(tmp_path / "captured.tif")).ReadAsArray()[:3]
    a, _, x0, _, e, y0 = grid.transform
    gdal.Warp(str(tmp_path / "warped.tif"), os.path.join(PORTO, "map_carto.tif"), dstSRS="EPSG:32629",
              outputBounds=(x0, y0 + grid.height * e, x0 + grid.width * a, y0), width=grid.width,
              height=grid.height, resampleAlg="near", errorThreshold=0)
    warped = gdal.Open(str(tmp_path / "warped.tif")).ReadAsArray()[:3]
    assert (captured == warped).all(axis=0).mean() > 0.999
    smoothed = str(tmp_path / "smoothed.tif")       # what QGIS's own drawing of the layer gives
    render_to_geotiff([layer], grid, crs, smoothed)
    assert (gdal.Open(smoothed).ReadAsArray()[:3] == warped).all(axis=0).mean() < 0.9


@needs_porto
def test_processing_on_the_osm_xyz_layer_reads_schools_as_on_the_geotiff(plugin_pkg, qgis_processing, qgis_new_project,
                                                                         qgis_iface, porto_xyz):
    import processing
    from backend.geo.vectormap import _reproject
    from rasterio.crs import CRS
    from qgis.core import QgsRasterLayer
    box = (531960.0, 4554560.0, 533420.0, 4556020.0)        # nearly all of the scene, in UTM 29N
    plugin = plugin_pkg.classFactory(qgis_iface)
    plugin.initProcessing()
    found = {}
    try:
        QgsProject.instance().setCrs(QgsCoordinateReferenceSystem("EPSG:32629"))
        for name, layer in (("xyz", QgsRasterLayer(porto_xyz, "OpenStreetMap", "wms")),
                            ("tif", QgsRasterLayer(os.path.join(PORTO, "map_carto.tif"), "carto"))):
            QgsProject.instance().addMapLayer(layer)
            res = processing.run("socioseg:detect_entities", {
                "SATELLITE": os.path.join(PORTO, "satellite.tif"), "MAP": [layer], "QUERY": "educational",
                "TASK": 3, "EXTENT": f"{box[0]},{box[2]},{box[1]},{box[3]} [EPSG:32629]",
                "RESOLUTION": 1.0, "ENGINE": 0, "OUTPUT": "memory:"})
            found[name] = shapely.union_all([shapely.from_wkt(f.geometry().asWkt())
                                             for f in res["OUTPUT"].getFeatures()])
    finally:
        plugin.unload()
    with open(os.path.join(PORTO, "truth.geojson"), encoding="utf-8") as fh:
        edu = [shapely.geometry.shape(f["geometry"]) for f in json.load(fh)["features"]
               if f["properties"]["class"] in ("school", "university", "college", "kindergarten")]
    truth = shapely.union_all(_reproject(np.array(edu, object), CRS.from_epsg(4326), CRS.from_epsg(32629)))
    truth = truth.intersection(shapely.box(*box))
    iou = {k: g.intersection(truth).area / g.union(truth).area for k, g in found.items()}
    # drawn smoothed, the XYZ layer gave 0.19 (labels and line colours blended away)
    print("educational IoU", iou)
    assert iou["xyz"] >= 0.42 and iou["xyz"] >= iou["tif"] - 0.03, iou


@needs_porto
def test_the_xyz_layer_reads_the_same_at_any_resolution_and_phase(plugin_pkg, qgis_processing, qgis_new_project,
                                                                  qgis_iface, porto_xyz):
    """The capture keeps the XYZ tiles' own pixels and the map reader reads those, so the places do not
    depend on the grid the panel asks for (issue 22: IoU between runs >= 0.95)."""
    import processing
    from qgis.core import QgsRasterLayer
    box = (532000.0, 4555000.0, 533000.0, 4556000.0)      # 1 km of central Porto, in UTM 29N
    plugin = plugin_pkg.classFactory(qgis_iface)
    plugin.initProcessing()
    found = {}
    try:
        QgsProject.instance().setCrs(QgsCoordinateReferenceSystem("EPSG:32629"))
        layer = QgsRasterLayer(porto_xyz, "OpenStreetMap", "wms")
        QgsProject.instance().addMapLayer(layer)
        for res, shift in ((1.0, 0.0), (0.5, 0.0), (1.0, 0.37)):
            b = (box[0] + shift, box[1] + shift, box[2] + shift, box[3] + shift)
            out = processing.run("socioseg:detect_entities", {
                "SATELLITE": os.path.join(PORTO, "satellite.tif"), "MAP": [layer], "QUERY": "educational",
                "TASK": 3, "EXTENT": f"{b[0]},{b[2]},{b[1]},{b[3]} [EPSG:32629]",
                "RESOLUTION": res, "ENGINE": 0, "OUTPUT": "memory:"})["OUTPUT"]
            found[(res, shift)] = shapely.union_all([shapely.from_wkt(f.geometry().asWkt())
                                                     for f in out.getFeatures()]).intersection(shapely.box(*box).buffer(-2))
    finally:
        plugin.unload()
    first = found[(1.0, 0.0)]
    assert first.area > 10_000
    ious = {k: g.intersection(first).area / g.union(first).area for k, g in found.items()}
    print("xyz consistency", ious)
    assert min(ious.values()) >= 0.95, ious

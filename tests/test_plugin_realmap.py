"""The plugin's path on a real map: QGIS renders Porto's genuine OSM Carto GeoTIFF onto the grid, the
worker reads it (skipped when ../shared/realdata/porto is not beside the checkout)."""
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

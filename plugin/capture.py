"""Capturing QGIS layers over an area into a scene folder (backend/contract.py), tile by tile.

Each layer group is rendered by QGIS block by block (one QgsMapSettings per block extent) straight into
a GeoTIFF on the grid, so no whole-area image is ever held in QGIS's memory, and a cancel is honoured
between blocks. A map group with an XYZ tile layer (QGIS's standard OpenStreetMap layer) is rendered at
the tiles' own pixels in Web Mercator and kept so for detection (the backend reads it at those pixels,
as it reads a map file given to the CLI; elsewhere it is resampled onto the grid with nearest
neighbour): QGIS draws XYZ tiles smoothed wherever it scales them, which blends the legend's exact
colours and the labels' strokes the map reader reads. The block's georeference is read back from the rendered settings' visibleExtent()
(QGIS widens an extent to the output's aspect ratio) and checked against the grid. Vector map layers
also go to a GeoPackage (QGIS's own writer), reprojected to the grid's CRS, for the map reader.

Only QGIS, QGIS's own GDAL (osgeo) and numpy are used here: rasterio, shapely, pyproj and torch would
bring second copies of GDAL / GEOS / PROJ into QGIS's process (see the README).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

from qgis.core import (QgsCoordinateReferenceSystem, QgsCoordinateTransform, QgsDataSourceUri, QgsMapLayer,
                       QgsMapRendererCustomPainterJob, QgsMapSettings, QgsProject, QgsRectangle,
                       QgsUnitTypes, QgsVectorFileWriter, QgsVectorLayer)
from qgis.PyQt.QtCore import QSize
from qgis.PyQt.QtGui import QColor, QImage, QPainter

CARTO_BACKGROUND = (242, 239, 233)   # a vector map is drawn on OSM Carto's land colour, like the training maps
BLOCK = 1024                         # pixels per rendered block side: bounds QGIS's memory per layer group
MARGIN = 32                          # rendered around each block and cut off, so symbols at block edges are whole
MERCATOR_HALF = 20037508.342789244   # EPSG:3857's half extent: XYZ tile grids start at (-HALF, HALF)


def units_per_metre(crs: QgsCoordinateReferenceSystem) -> float:
    """Map units in one metre of ground (degrees: the mean metre of a degree)."""
    units = crs.mapUnits()
    if units == QgsUnitTypes.DistanceDegrees:
        return 1.0 / 111_320.0
    factor = QgsUnitTypes.fromUnitToUnitFactor(QgsUnitTypes.DistanceMeters, units)
    return factor if factor > 0 else 1.0


def plan_grid(extent: QgsRectangle, crs, resolution_m: float):
    """The contract's GridSpec over `extent` (in `crs`) at `resolution_m` metres per pixel."""
    from ..backend.contract import GridSpec
    from ..backend.errors import InputError

    if extent is None or extent.isEmpty() or extent.width() <= 0 or extent.height() <= 0:
        raise InputError("the Area is empty: choose the canvas extent, a layer's extent or draw a rectangle")
    if resolution_m <= 0 or not math.isfinite(resolution_m):
        raise InputError("the Resolution must be a positive number of metres per pixel")
    if not crs.isValid():
        raise InputError("the project has no valid CRS: set one in Project > Properties > CRS")
    res = resolution_m * units_per_metre(crs)
    width = max(1, int(math.ceil(extent.width() / res - 1e-9)))
    height = max(1, int(math.ceil(extent.height() / res - 1e-9)))
    return GridSpec(crs.toWkt(QgsCoordinateReferenceSystem.WKT_PREFERRED),
                    (res, 0.0, extent.xMinimum(), 0.0, -res, extent.yMaximum()), width, height)


def map_settings(extent: QgsRectangle, crs, width: int, height: int, layers, background=None) -> QgsMapSettings:
    ms = QgsMapSettings()
    ms.setDestinationCrs(crs)
    ms.setLayers(layers)
    ms.setExtent(extent)
    ms.setOutputSize(QSize(width, height))
    ms.setOutputDpi(96)
    ms.setBackgroundColor(QColor(*background) if background else QColor(0, 0, 0, 0))
    ms.setTransformContext(QgsProject.instance().transformContext())
    ms.setFlag(QgsMapSettings.Antialiasing, True)
    return ms


def render(ms: QgsMapSettings):
    """RGBA uint8 array of what `ms` shows, rendered in the calling thread."""
    import numpy as np

    size = ms.outputSize()
    img = QImage(size, QImage.Format_RGBA8888)
    img.fill(QColor(0, 0, 0, 0))
    painter = QPainter(img)
    job = QgsMapRendererCustomPainterJob(ms, painter)
    job.renderSynchronously()
    painter.end()
    ptr = img.constBits()
    ptr.setsize(img.sizeInBytes() if hasattr(img, "sizeInBytes") else img.byteCount())
    arr = np.frombuffer(ptr, np.uint8).reshape(size.height(), img.bytesPerLine())
    return arr[:, : size.width() * 4].reshape(size.height(), size.width(), 4).copy()


def blocks(width: int, height: int, size: int | None = None) -> list[tuple[int, int, int, int]]:
    """(x0, y0, w, h) of the non-overlapping render blocks covering the grid, row by row."""
    size = size or BLOCK
    return [(x, y, min(size, width - x), min(size, height - y))
            for y in range(0, height, size) for x in range(0, width, size)]


def render_to_geotiff(layers, grid, crs, path: str, background=None, progress=None, cancel=None) -> bool:
    """Render `layers` over the grid into an RGBA GeoTIFF block by block; True if any pixel is drawn.
    Raises Cancelled between blocks when `cancel()` turns true (the partial file is the caller's to drop)."""
    from osgeo import gdal

    from ..backend.errors import Cancelled

    a, _, x_min, _, e, y_max = grid.transform
    ds = gdal.GetDriverByName("GTiff").Create(path, grid.width, grid.height, 4, gdal.GDT_Byte,
                                              ["TILED=YES", "COMPRESS=DEFLATE", "ZLEVEL=1", "BIGTIFF=IF_SAFER",
                                               "PHOTOMETRIC=RGB", "ALPHA=YES"])
    if ds is None:
        raise OSError(f"cannot create {path}: {gdal.GetLastErrorMsg()}")
    try:
        ds.SetGeoTransform((x_min, a, 0.0, y_max, 0.0, e))
        ds.SetProjection(grid.crs_wkt)
        drawn = False
        todo = blocks(grid.width, grid.height)
        for k, (x0, y0, w, h) in enumerate(todo):
            if cancel is not None and cancel():
                raise Cancelled("cancelled by the user")
            ext = QgsRectangle(x_min + (x0 - MARGIN) * a, y_max + (y0 + h + MARGIN) * e,
                               x_min + (x0 + w + MARGIN) * a, y_max + (y0 - MARGIN) * e)
            ms = map_settings(ext, crs, w + 2 * MARGIN, h + 2 * MARGIN, layers, background)
            rgba = render(ms)
            v = ms.visibleExtent()      # where QGIS really drew, in grid pixels
            col, row = (v.xMinimum() - x_min) / a + MARGIN, (v.yMaximum() - y_max) / e + MARGIN
            if abs(col - x0) > 0.01 or abs(row - y0) > 0.01 or abs(v.width() / a - (w + 2 * MARGIN)) > 0.01:
                raise RuntimeError(f"QGIS rendered block ({x0}, {y0}) at ({col:.3f}, {row:.3f}) px")
            rgba = rgba[MARGIN:MARGIN + h, MARGIN:MARGIN + w]
            drawn = drawn or bool((rgba[..., 3] > 0).any())
            for band in range(4):
                # GDAL's bindings return an error code (no exception) when, e.g., the disk is full
                if ds.GetRasterBand(band + 1).WriteArray(rgba[..., band], x0, y0) != 0:
                    raise OSError(f"cannot write {path}: {gdal.GetLastErrorMsg() or 'write failed'}")
            if progress is not None:
                progress((k + 1) / len(todo))
        gdal.ErrorReset()          # only the flush's own errors count below, not a layer's read warnings
        ds.FlushCache()
        if gdal.GetLastErrorType() >= gdal.CE_Failure:
            raise OSError(f"cannot write {path}: {gdal.GetLastErrorMsg()}")
        return drawn
    finally:
        ds = None   # closes the file (GDAL's Python idiom)


def xyz_zooms(layer) -> tuple[int, int, float] | None:
    """(zmin, zmax, tile pixel ratio) of an XYZ tile layer, None for any other layer."""
    if layer.type() != QgsMapLayer.RasterLayer or layer.providerType() != "wms":
        return None
    uri = QgsDataSourceUri()
    uri.setEncodedUri(layer.source())
    if uri.param("type") != "xyz":
        return None

    def number(name, default):
        try:
            return float(uri.param(name)) if uri.param(name) else default
        except ValueError:
            return default
    return int(number("zmin", 0)), int(number("zmax", 19)), number("tilePixelRatio", 0) or 1.0


def tile_grid(grid, crs, zooms):
    """The Web Mercator grid of an XYZ layer's own pixels over `grid` (and a few pixels around), at the
    zoom whose pixels are nearest the grid's, within the layer's zoom range."""
    from ..backend.contract import GridSpec

    zmin, zmax, ratio = zooms
    merc = QgsCoordinateReferenceSystem("EPSG:3857")
    a, _, x_min, _, e, y_max = grid.transform
    box = QgsRectangle(x_min, y_max + grid.height * e, x_min + grid.width * a, y_max)
    box = QgsCoordinateTransform(crs, merc, QgsProject.instance()).transformBoundingBox(box)
    per_px = max(box.width() / grid.width, box.height() / grid.height)
    level = lambda z: 2 * MERCATOR_HALF / (256 * ratio * 2 ** z)
    z = min(max(int(round(math.log2(level(0) / per_px))), zmin), max(zmin, zmax))
    res = level(z)
    c0 = math.floor((box.xMinimum() + MERCATOR_HALF) / res) - 2
    c1 = math.ceil((box.xMaximum() + MERCATOR_HALF) / res) + 2
    r0 = math.floor((MERCATOR_HALF - box.yMaximum()) / res) - 2
    r1 = math.ceil((MERCATOR_HALF - box.yMinimum()) / res) + 2
    return GridSpec(merc.toWkt(QgsCoordinateReferenceSystem.WKT_PREFERRED),
                    (res, 0.0, c0 * res - MERCATOR_HALF, 0.0, -res, MERCATOR_HALF - r0 * res), c1 - c0, r1 - r0)


def render_map_to_geotiff(layers, grid, crs, path: str, background=None, progress=None, cancel=None,
                          on_grid: bool = True) -> bool:
    """render_to_geotiff, except that a group with an XYZ tile layer is rendered at the tiles' own
    pixels and then resampled onto the grid with nearest neighbour (see the module docstring). With
    `on_grid=False` that group stays at the tiles' own pixels in Web Mercator: the backend reads such
    a map at its own pixels (the map reader) and onto the grid itself (the model's view)."""
    zooms = next((z for z in map(xyz_zooms, layers) if z is not None), None)
    if zooms is None:
        return render_to_geotiff(layers, grid, crs, path, background, progress, cancel)
    from osgeo import gdal

    native = tile_grid(grid, crs, zooms)
    if not on_grid:
        return render_to_geotiff(layers, native, QgsCoordinateReferenceSystem("EPSG:3857"), path, background,
                                 progress, cancel)
    tmp = path + ".tiles.tif"
    try:
        drawn = render_to_geotiff(layers, native, QgsCoordinateReferenceSystem("EPSG:3857"), tmp, background,
                                  progress, cancel)
        a, _, x_min, _, e, y_max = grid.transform
        out = gdal.Warp(path, tmp, format="GTiff", dstSRS=grid.crs_wkt, resampleAlg="near",
                        outputBounds=(x_min, y_max + grid.height * e, x_min + grid.width * a, y_max),
                        width=grid.width, height=grid.height, errorThreshold=0,
                        creationOptions=["TILED=YES", "COMPRESS=DEFLATE", "ZLEVEL=1", "BIGTIFF=IF_SAFER"])
        if out is None:
            raise OSError(f"cannot write {path}: {gdal.GetLastErrorMsg()}")
        out = None      # closes the file (GDAL's Python idiom)
        return drawn
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_features(layers, crs, extent: QgsRectangle, path: str) -> int:
    """Every vector layer's features inside `extent` (in `crs`) into one GeoPackage, one table per layer,
    reprojected to `crs` with QGIS's own writer; returns how many features were written."""
    ctx = QgsProject.instance().transformContext()
    total = 0
    for i, layer in enumerate(layers):
        opts = QgsVectorFileWriter.SaveVectorOptions()
        opts.driverName = "GPKG"
        opts.fileEncoding = "UTF-8"
        opts.layerName = f"map{i}_{layer.name()}"[:60]
        opts.ct = QgsCoordinateTransform(layer.crs(), crs, QgsProject.instance())
        opts.filterExtent = extent      # in the destination CRS: QGIS maps it back through `ct`
        opts.actionOnExistingFile = (QgsVectorFileWriter.CreateOrOverwriteFile if i == 0
                                     else QgsVectorFileWriter.CreateOrOverwriteLayer)
        writer = getattr(QgsVectorFileWriter, "writeAsVectorFormatV3", QgsVectorFileWriter.writeAsVectorFormatV2)
        res = writer(layer, path, ctx, opts)
        if res[0] != QgsVectorFileWriter.NoError:
            raise OSError(f"cannot write the map layer '{layer.name()}' to {path}: {res[1]}")
        written = QgsVectorLayer(f"{path}|layername={opts.layerName}", "check", "ogr")
        total += max(0, written.featureCount())
    return total


@dataclass
class LayerCapture:
    """What was written into the scene folder: file names (relative to it), the grid and its tiles."""
    grid: object                    # backend.contract.GridSpec
    tiles: list                     # backend.geo.tiles.Tile, planned once, here
    satellite: str
    map_image: str
    map_features: str | None
    map_masks_coverage: bool


def capture_scene(folder: str, sat_layer, map_layers: list, extent: QgsRectangle, crs, resolution_m: float,
                  plan, progress=None, cancel=None) -> LayerCapture:
    """Render the satellite and the map layers over `extent` (in `crs`) into `folder`; tiles are planned
    (and a too large area refused) before anything is rendered."""
    from ..backend import contract
    from ..backend.errors import InputError

    if sat_layer is None or not sat_layer.isValid():
        raise InputError("choose a valid Satellite layer")
    map_layers = [m for m in map_layers or [] if m is not None]
    if not map_layers or not all(m.isValid() for m in map_layers):
        raise InputError("choose one or more valid Map layers")
    if any(m.id() == sat_layer.id() for m in map_layers):
        raise InputError(f"'{sat_layer.name()}' is both the Satellite layer and a Map layer: choose another map")
    grid = plan_grid(extent, crs, resolution_m)
    tiles = plan.layout(grid.width, grid.height)
    vectors = [m for m in map_layers if m.type() == QgsMapLayer.VectorLayer]
    all_vector = len(vectors) == len(map_layers)

    def step(lo, hi):
        return None if progress is None else (lambda f: progress(lo + (hi - lo) * f))

    drawn = render_to_geotiff([sat_layer], grid, crs, os.path.join(folder, contract.SATELLITE_FILE),
                              progress=step(0.0, 0.45), cancel=cancel)
    if not drawn:
        raise InputError(f"the Satellite layer '{sat_layer.name()}' has no pixels in this Area")
    drawn = render_map_to_geotiff(_tree_order(map_layers), grid, crs, os.path.join(folder, contract.MAP_FILE),
                                  CARTO_BACKGROUND if all_vector else None, step(0.45, 0.9), cancel, on_grid=False)
    if not drawn:
        raise InputError("the Map layers have no pixels in this Area")
    features = None
    if vectors:
        features = contract.FEATURES_FILE
        n = write_features(vectors, crs, extent, os.path.join(folder, features))
        if progress is not None:
            progress(1.0)
        if n == 0:
            if all_vector:
                names = ", ".join(f"'{v.name()}'" for v in vectors)
                raise InputError(f"the Map layer(s) {names} have no features in this Area")
            features = None
    return LayerCapture(grid, tiles, contract.SATELLITE_FILE, contract.MAP_FILE, features, not all_vector)


def _tree_order(layers: list) -> list:
    """Layers in the layer tree's drawing order (top first), as QgsMapSettings expects."""
    order = [l.id() for l in QgsProject.instance().layerTreeRoot().layerOrder()]
    return sorted(layers, key=lambda l: order.index(l.id()) if l.id() in order else len(order))

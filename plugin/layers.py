"""Results as styled layers kept in a GeoPackage (they survive saving and reopening the project), and
export of a result layer to GeoPackage / Shapefile with its style."""
from __future__ import annotations

import os
import re
from datetime import datetime

from qgis.core import (QgsApplication, QgsCoordinateTransformContext, QgsFeature, QgsField, QgsFields,
                       QgsGeometry, QgsMapLayer, QgsProject, QgsVectorFileWriter, QgsVectorLayer)
from qgis.PyQt.QtCore import QVariant
from qgis.PyQt.QtGui import QColor

from .deps import PLUGIN_DIR

STYLE = os.path.join(PLUGIN_DIR, "resources", "style.qml")
QUERY_PROPERTY = "socioseg/query"        # marks a layer as a SocioSeg result (and which query made it)
RESULTS_FILE = "socioseg_results.gpkg"
# Outline colours of successive results (the fill is the same colour, mostly transparent).
PALETTE = ["#e60096", "#0072b2", "#d55e00", "#009e73", "#cc79a7", "#56b4e9", "#e69f00", "#7b3294",
           "#1b7837", "#b2182b"]
FORMATS = {"GeoPackage (*.gpkg)": ("GPKG", ".gpkg"), "ESRI Shapefile (*.shp)": ("ESRI Shapefile", ".shp")}


def _fields() -> QgsFields:
    from ..backend.output.schema import FIELDS

    kinds = {str: QVariant.String, int: QVariant.Int, float: QVariant.Double}
    fields = QgsFields()
    for name, kind in FIELDS:
        fields.append(QgsField(name, kinds[kind]))
    return fields


def layer_name(query: str, reasoner_spec: str) -> str:
    engine = "SocioReasoner" if reasoner_spec.startswith("qwen") else "map reader"
    return f"{query.strip()[:1].upper()}{query.strip()[1:]} — {engine}"


def is_result(layer) -> bool:
    return layer is not None and bool(layer.customProperty(QUERY_PROPERTY))


def default_satellite(project: QgsProject):
    """The bottom-most raster of the layer tree (imagery lies under the map), never a result."""
    rasters = [l for l in project.layerTreeRoot().layerOrder() if l.type() == QgsMapLayer.RasterLayer and not is_result(l)]
    return rasters[-1] if rasters else None


def default_map_layers(project: QgsProject, satellite_id: str | None) -> list:
    """Every vector layer of the same source as the topmost vector layer (an OSM extract is several
    layers), else the topmost visible raster that is not the satellite; never a result layer."""
    root = project.layerTreeRoot()
    ordered = [l for l in root.layerOrder() if not is_result(l) and l.id() != satellite_id]
    vectors = [l for l in ordered if l.type() == QgsMapLayer.VectorLayer]
    if vectors:
        source = vectors[0].source().split("|")[0]
        return [l for l in vectors if l.source().split("|")[0] == source]
    for l in ordered:
        node = root.findLayer(l.id())
        if l.type() == QgsMapLayer.RasterLayer and node is not None and node.isVisible():
            return [l]
    return []


def features_from(result, fields: QgsFields) -> list[QgsFeature]:
    """QGIS features (multipolygons) of a worker result (backend.contract.SceneResult)."""
    from ..backend.output.schema import FIELDS

    out = []
    for e in result.entities:
        f = QgsFeature(fields)
        geom = QgsGeometry.fromWkt(e.wkt)
        geom.convertToMultiType()
        f.setGeometry(geom)
        attrs = e.attrs
        f.setAttributes([None if attrs.get(n) is None else int(attrs[n]) if kind is int else attrs[n]
                         for n, kind in FIELDS])
        out.append(f)
    return out


def memory_layer(result, name: str, crs) -> QgsVectorLayer:
    layer = QgsVectorLayer("MultiPolygon", name, "memory")
    layer.setCrs(crs)
    layer.dataProvider().addAttributes(list(_fields()))
    layer.updateFields()
    layer.dataProvider().addFeatures(features_from(result, layer.fields()))
    layer.updateExtents()
    return layer


def results_path(folder: str = "", project: QgsProject | None = None) -> str:
    """Where results are kept: the folder set in Settings, else the project's folder, else the QGIS
    profile's socioseg folder (an unsaved project has no folder)."""
    project = project or QgsProject.instance()
    if not folder:
        folder = project.absolutePath() or os.path.join(QgsApplication.qgisSettingsDirPath(), "socioseg")
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, RESULTS_FILE)


def _table_name(path: str, query: str, reasoner_spec: str) -> str:
    base = re.sub(r"[^0-9A-Za-z]+", "_", f"{query}_{'socioreasoner' if reasoner_spec.startswith('qwen') else 'mapreader'}")
    base = f"{base.strip('_').lower()[:40]}_{datetime.now():%Y%m%d_%H%M%S}"
    taken = set()
    if os.path.exists(path):
        probe = QgsVectorLayer(path, "probe", "ogr")
        taken = {s.split("!!::!!")[1] for s in probe.dataProvider().subLayers()} if probe.isValid() else set()
    name, k = base, 1
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    return name


def write_layer(layer: QgsVectorLayer, path: str, driver: str, layer_name: str | None = None) -> None:
    """Write `layer` with QGIS's writer; a GeoPackage keeps its other tables. Raises OSError."""
    opts = QgsVectorFileWriter.SaveVectorOptions()
    opts.driverName = driver
    opts.fileEncoding = "UTF-8"
    if layer_name:
        opts.layerName = layer_name
    if driver == "GPKG" and os.path.exists(path):
        opts.actionOnExistingFile = QgsVectorFileWriter.CreateOrOverwriteLayer
    project = QgsProject.instance()
    ctx = project.transformContext() if project else QgsCoordinateTransformContext()
    writer = getattr(QgsVectorFileWriter, "writeAsVectorFormatV3", QgsVectorFileWriter.writeAsVectorFormatV2)
    res = writer(layer, path, ctx, opts)
    if res[0] != QgsVectorFileWriter.NoError:
        raise OSError(f"cannot write {path}: {res[1]}")


def style_layer(layer: QgsVectorLayer, colour: str) -> None:
    """The default style (semi-transparent fill, labels) in `colour`."""
    if os.path.exists(STYLE):
        layer.loadNamedStyle(STYLE)
    symbol = layer.renderer().symbol() if hasattr(layer.renderer(), "symbol") else None
    if symbol is not None:
        sl = symbol.symbolLayer(0)
        fill = QColor(colour)
        fill.setAlpha(70)
        sl.setFillColor(fill)
        sl.setStrokeColor(QColor(colour))
    layer.triggerRepaint()


def next_colour(project: QgsProject | None = None) -> str:
    """The first palette colour no result layer in the project uses (cycling when all are used)."""
    project = project or QgsProject.instance()
    used = [l.customProperty("socioseg/colour") for l in project.mapLayers().values() if is_result(l)]
    free = [c for c in PALETTE if c not in used]
    return free[0] if free else PALETTE[len(used) % len(PALETTE)]


def result_layer(result, query: str, reasoner_spec: str, crs, store: str) -> QgsVectorLayer:
    """The result written as a new table of the GeoPackage `store`, loaded from there and styled in a
    colour of its own (the style is saved in the GeoPackage too)."""
    from ..backend.errors import InputError

    table = _table_name(store, query, reasoner_spec)
    try:
        write_layer(memory_layer(result, table, crs), store, "GPKG", table)
    except OSError as exc:
        raise InputError(f"{exc}. Choose another results folder in Settings") from None
    source = f"{store}|layername={table}"
    colour = next_colour()
    # The style goes into the GeoPackage through a layer of its own, before the project's layer opens:
    # a layer already open while the style table is created fails its next query ("unable to open
    # database file" from GDAL's shared connection).
    styled = QgsVectorLayer(source, table, "ogr")
    if not styled.isValid():
        raise InputError(f"the result was written to {store} but cannot be read back; choose another "
                         "results folder in Settings")
    style_layer(styled, colour)
    styled.saveStyleToDatabase(table[:30], "SocioSeg result style", True, "")   # GPKG: 30 characters
    del styled
    layer = QgsVectorLayer(source, layer_name(query, reasoner_spec), "ogr")
    style_layer(layer, colour)
    layer.setCustomProperty(QUERY_PROPERTY, query.strip().lower())
    layer.setCustomProperty("socioseg/colour", colour)
    return layer


def add_to_project(layer: QgsVectorLayer, replace: bool, project: QgsProject | None = None) -> list[str]:
    """Add at the top of the layer tree; with `replace`, remove earlier results of the same query from
    the project (their tables stay in the GeoPackage)."""
    project = project or QgsProject.instance()
    removed = []
    if replace:
        key = layer.customProperty(QUERY_PROPERTY)
        for other in list(project.mapLayers().values()):
            if other is not layer and other.customProperty(QUERY_PROPERTY) == key:
                removed.append(other.name())
                project.removeMapLayer(other.id())
    project.addMapLayer(layer, False)
    project.layerTreeRoot().insertLayer(0, layer)
    return removed


def suggested_file_name(layer) -> str:
    name = re.sub(r"[^0-9A-Za-z]+", "_", layer.name()).strip("_").lower()
    return name or "socioseg_result"


def export_path(path: str, chosen_filter: str) -> tuple[str, str]:
    """(path with the extension of the chosen format, OGR driver): the format is the chosen filter's,
    or the typed extension's when it names a known format."""
    ext = os.path.splitext(path)[1].lower()
    by_ext = {e: d for d, e in FORMATS.values()}
    if ext in by_ext:
        return path, by_ext[ext]
    driver, ext = FORMATS.get(chosen_filter, FORMATS["GeoPackage (*.gpkg)"])
    return path + ext, driver


def export_layer(layer: QgsVectorLayer, path: str, chosen_filter: str = "") -> str:
    """Write `layer` to a GeoPackage or a Shapefile (with .prj) keeping its style: in the GeoPackage's
    style table, or as a .qml beside the Shapefile (QGIS loads both by default). Everything is written
    in a temporary folder beside the target first and moved into place only when complete, so a failed
    export leaves an existing file as it was. Raises OSError."""
    import shutil
    import tempfile

    path, driver = export_path(path, chosen_filter)
    folder, name = os.path.split(os.path.abspath(path))
    staging = tempfile.mkdtemp(prefix=".socioseg-export-", dir=folder)
    try:
        staged = os.path.join(staging, name)
        write_layer(layer, staged, driver, "entities" if driver == "GPKG" else None)
        if driver == "GPKG":
            out = QgsVectorLayer(f"{staged}|layername=entities", layer.name(), "ogr")
            out.setRenderer(layer.renderer().clone())
            if layer.labeling() is not None:
                out.setLabeling(layer.labeling().clone())
            out.setLabelsEnabled(layer.labelsEnabled())
            error = out.saveStyleToDatabase("entities", "SocioSeg result style", True, "")
            del out                       # closes the GeoPackage before it moves
            if error:
                raise OSError(f"cannot save the style into {path}: {error}")
        else:
            message, ok = layer.saveNamedStyle(os.path.splitext(staged)[0] + ".qml")
            if not ok:
                raise OSError(f"cannot save the style beside {path}: {message}")
            stem = os.path.splitext(name)[0]
            new = {os.path.splitext(f)[1].lower() for f in os.listdir(staging)}
            for old in os.listdir(folder):      # an old spatial index of the replaced Shapefile would lie
                base, ext = os.path.splitext(old)
                if base == stem and ext.lower() in (".qix", ".sbn", ".sbx", ".cpg") and ext.lower() not in new:
                    os.remove(os.path.join(folder, old))
        for f in os.listdir(staging):
            os.replace(os.path.join(staging, f), os.path.join(folder, f))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path

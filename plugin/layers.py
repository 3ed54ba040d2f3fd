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
READ_FROM_PROPERTY = "socioseg/read_from"   # the map (and engine) a result was read from: replacing compares it
RESULTS_FILE = "socioseg_results.gpkg"
# Outline colours of successive results (the fill is the same colour, mostly transparent).
PALETTE = ["#e60096", "#0072b2", "#d55e00", "#009e73", "#cc79a7", "#56b4e9", "#e69f00", "#7b3294",
           "#1b7837", "#b2182b"]
FORMATS = {"GeoPackage (*.gpkg)": ("GPKG", ".gpkg"), "ESRI Shapefile (*.shp)": ("ESRI Shapefile", ".shp"),
           "GeoJSON (*.geojson)": ("GeoJSON", ".geojson")}


def _fields() -> QgsFields:
    from ..backend.output.schema import FIELDS

    kinds = {str: QVariant.String, int: QVariant.Int, float: QVariant.Double}
    fields = QgsFields()
    for name, kind in FIELDS:
        fields.append(QgsField(name, kinds[kind]))
    return fields


def read_from(map_layers: list) -> str:
    """What a result was read from, for its name: the map layer's name, or the name the layers of one
    vector source share ("OSM vector" for "OSM vector areas", "OSM vector roads"), else the names joined."""
    names = [l.name() for l in map_layers]
    if len(names) <= 1:
        return names[0] if names else "the map"
    common = os.path.commonprefix(names).rstrip(" _-—·(")
    if len(common) >= 3:
        return common
    return " + ".join(names[:2]) + (f" + {len(names) - 2} more" if len(names) > 2 else "")


def map_key(map_layers: list) -> str:
    """Identifies the map a result was read from (the same files loaded again give the same key); a
    digest, so no source's password lands in the project file twice."""
    import hashlib

    return hashlib.sha1("\n".join(sorted(l.source() for l in map_layers)).encode()).hexdigest()[:16]


def layer_name(query: str, reasoner_spec: str, source: str = "") -> str:
    """'Schools — OSM vector', 'Schools — map_carto', 'Schools — map_carto · SocioReasoner': the query,
    what it was read from and (for the vision-language engine) the engine."""
    engine = "" if reasoner_spec.startswith("mapreader") else (
        "model server" if reasoner_spec.startswith("openai") else "SocioReasoner")
    label = " · ".join(x for x in (source, engine) if x) or "map reader"
    return f"{query.strip()[:1].upper()}{query.strip()[1:]} — {label}"


def result_table(layer) -> tuple[str, str] | None:
    """(GeoPackage file, table) of one of the plugin's own result layers, else None."""
    if layer is None or not layer.customProperty(QUERY_PROPERTY):
        return None
    path, _, rest = layer.source().partition("|layername=")
    if os.path.basename(path) != RESULTS_FILE or not rest:
        return None
    return path, rest.split("|")[0]


def is_result(layer) -> bool:
    """A result layer the plugin wrote: the mark AND its table in the results GeoPackage. The mark alone
    can come back in a style file (an exported copy loaded by hand is the user's own layer)."""
    return result_table(layer) is not None


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
    if driver != "GPKG":         # a GeoPackage's feature id is no attribute of the places
        opts.attributes = [i for i, f in enumerate(layer.fields()) if f.name() != "fid"]
    if driver == "GeoJSON":      # RFC 7946: WGS 84 longitude/latitude, what web maps and other tools expect
        opts.layerOptions = ["RFC7946=YES"]
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
        # A place the map cannot tell apart from other classes (certain = 0) is drawn dashed and
        # lighter, so it does not read as one the map names (backend/output/evidence.py).
        from qgis.core import QgsProperty, QgsSymbolLayer

        c = QColor(colour)
        sl.setDataDefinedProperty(QgsSymbolLayer.PropertyStrokeStyle, QgsProperty.fromExpression(
            "CASE WHEN \"certain\" = 0 THEN 'dash' ELSE 'solid' END"))
        sl.setDataDefinedProperty(QgsSymbolLayer.PropertyFillColor, QgsProperty.fromExpression(
            f"CASE WHEN \"certain\" = 0 THEN '{c.red()},{c.green()},{c.blue()},25' "
            f"ELSE '{c.red()},{c.green()},{c.blue()},70' END"))
    layer.triggerRepaint()


def all_uncertain(entities) -> bool:
    """Whether every place of a result is one the map cannot tell apart (its layer name says so)."""
    return bool(entities) and not any(int((e.attrs if hasattr(e, "attrs") else e).get("certain") or 0)
                                      for e in entities)


def next_colour(project: QgsProject | None = None) -> str:
    """The first palette colour no result layer in the project uses (cycling when all are used)."""
    project = project or QgsProject.instance()
    used = [l.customProperty("socioseg/colour") for l in project.mapLayers().values() if is_result(l)]
    free = [c for c in PALETTE if c not in used]
    return free[0] if free else PALETTE[len(used) % len(PALETTE)]


def result_layer(result, query: str, reasoner_spec: str, crs, store: str, from_text: str = "",
                 source_key: str = "") -> QgsVectorLayer:
    """The result written as a new table of the GeoPackage `store`, loaded from there and styled in a
    colour of its own (the style is saved in the GeoPackage too). `from_text` names the map it was read
    from (see read_from); `source_key` identifies those map layers, for replacing."""
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
    name = layer_name(query, reasoner_spec, from_text)
    if all_uncertain(result.entities):
        name += " (all uncertain: the map does not tell the class apart)"
    layer = QgsVectorLayer(source, name, "ogr")
    style_layer(layer, colour)
    layer.setCustomProperty(QUERY_PROPERTY, query.strip().lower())
    layer.setCustomProperty(READ_FROM_PROPERTY, f"{reasoner_spec}|{source_key or from_text}")
    layer.setCustomProperty("socioseg/colour", colour)
    return layer


def add_to_project(layer: QgsVectorLayer, replace: bool, project: QgsProject | None = None) -> list[str]:
    """Add at the top of the layer tree; with `replace`, remove from the project the plugin's own earlier
    results of the same query read from the same map with the same engine (never a layer of the user's,
    never a result from another map). Returns, for each removed one, its name and where its table
    still is."""
    project = project or QgsProject.instance()
    removed = []
    if replace:
        key = (layer.customProperty(QUERY_PROPERTY), layer.customProperty(READ_FROM_PROPERTY))
        for other in list(project.mapLayers().values()):
            where = result_table(other)
            if (other is not layer and where is not None
                    and (other.customProperty(QUERY_PROPERTY), other.customProperty(READ_FROM_PROPERTY)) == key):
                removed.append(f"'{other.name()}' (still in {where[0]}, table {where[1]})")
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
    """Write `layer` to a GeoPackage, a Shapefile (with .prj) or a GeoJSON file (WGS 84, RFC 7946) keeping
    its style: in the GeoPackage's style table, or as a .qml beside the file (QGIS loads both by default);
    the style leaves out the plugin's marks, so the copy is the user's layer, not a result. Everything is written
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
            message, ok = layer.saveNamedStyle(os.path.splitext(staged)[0] + ".qml",
                                               QgsMapLayer.StyleCategories(
                int(QgsMapLayer.AllStyleCategories) & ~int(QgsMapLayer.CustomProperties)))
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

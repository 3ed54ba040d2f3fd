"""Detections as styled QGIS layers, and export to GeoPackage / Shapefile."""
from __future__ import annotations

import os

from qgis.core import (QgsCoordinateTransformContext, QgsFeature, QgsField, QgsFields, QgsGeometry,
                       QgsProject, QgsVectorFileWriter, QgsVectorLayer)
from qgis.PyQt.QtCore import QVariant

from .deps import PLUGIN_DIR

STYLE = os.path.join(PLUGIN_DIR, "resources", "style.qml")
QUERY_PROPERTY = "socioseg/query"


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


def features_from(result: dict, fields: QgsFields) -> list[QgsFeature]:
    """QGIS features (multipolygons) of a worker result."""
    from ..backend.output.schema import FIELDS

    out = []
    for e in result["entities"]:
        f = QgsFeature(fields)
        geom = QgsGeometry.fromWkt(e["wkt"])
        geom.convertToMultiType()
        f.setGeometry(geom)
        attrs = e["attrs"]
        f.setAttributes([None if attrs.get(n) is None else int(attrs[n]) if kind is int else attrs[n]
                         for n, kind in FIELDS])
        out.append(f)
    return out


def detection_layer(result: dict, name: str, crs, query: str) -> QgsVectorLayer:
    """A memory layer in `crs` (the capture's CRS) with one styled feature per detected place."""
    layer = QgsVectorLayer("MultiPolygon", name, "memory")
    layer.setCrs(crs)
    provider = layer.dataProvider()
    provider.addAttributes(list(_fields()))
    layer.updateFields()
    provider.addFeatures(features_from(result, layer.fields()))
    layer.updateExtents()
    if os.path.exists(STYLE):
        layer.loadNamedStyle(STYLE)
    layer.setCustomProperty(QUERY_PROPERTY, query.strip().lower())
    return layer


def add_to_project(layer: QgsVectorLayer, replace: bool, project: QgsProject | None = None) -> list[str]:
    """Add at the top of the layer tree; with `replace`, remove earlier results of the same query."""
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


def export_layer(layer: QgsVectorLayer, path: str) -> str:
    """Write GeoPackage (.gpkg) or Shapefile (.shp, with its .prj); raises RuntimeError on failure."""
    ext = os.path.splitext(path)[1].lower()
    driver = {".gpkg": "GPKG", ".shp": "ESRI Shapefile"}.get(ext)
    if driver is None:
        raise RuntimeError(f"cannot export to {path!r}: choose a .gpkg or .shp file")
    opts = QgsVectorFileWriter.SaveVectorOptions()
    opts.driverName = driver
    opts.fileEncoding = "UTF-8"
    if driver == "GPKG":
        opts.layerName = "entities"
    ctx = QgsProject.instance().transformContext() if QgsProject.instance() else QgsCoordinateTransformContext()
    if hasattr(QgsVectorFileWriter, "writeAsVectorFormatV3"):
        res = QgsVectorFileWriter.writeAsVectorFormatV3(layer, path, ctx, opts)
    else:
        res = QgsVectorFileWriter.writeAsVectorFormatV2(layer, path, ctx, opts)
    if res[0] != QgsVectorFileWriter.NoError:
        raise RuntimeError(f"export to {path} failed: {res[1]}")
    return path

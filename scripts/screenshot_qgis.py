"""Run inside QGIS (`qgis --code`): load the sample, find schools with the plugin, save a screenshot.

Used by scripts/screenshot.sh; the output path comes from SOCIOSEG_SCREENSHOT.
"""
import os

from qgis.core import QgsApplication, QgsCoordinateReferenceSystem, QgsProject, QgsRasterLayer, QgsVectorLayer
from qgis.PyQt.QtCore import QTimer
from qgis.utils import iface, plugins

ROOT = os.environ["SOCIOSEG_ROOT"]
OUT = os.environ["SOCIOSEG_SCREENSHOT"]
sample = os.path.join(ROOT, "resources", "sample")


def echo_log(message, tag, level):
    if tag == "SocioSeg":
        print(f"[SocioSeg log] {message}", flush=True)


QgsApplication.messageLog().messageReceived.connect(echo_log)


def shoot():
    iface.mainWindow().grab().save(OUT)
    print(f"wrote {OUT}", flush=True)
    QgsApplication.exit(0)


def run():
    project = QgsProject.instance()
    project.setCrs(QgsCoordinateReferenceSystem("EPSG:32650"))
    sat = QgsRasterLayer(os.path.join(sample, "satellite.tif"), "Satellite (sample)")
    areas = QgsVectorLayer(os.path.join(sample, "map.gpkg") + "|layername=areas", "Map areas (OSM-style)", "ogr")
    carto = QgsRasterLayer(os.path.join(sample, "map.tif"), "Map (Carto style)")
    for lyr in (carto, sat, areas):
        project.addMapLayer(lyr)
    root = project.layerTreeRoot()
    root.findLayer(areas.id()).setItemVisibilityChecked(False)
    root.findLayer(carto.id()).setItemVisibilityChecked(False)
    iface.mapCanvas().setExtent(sat.extent())
    plugin = plugins["socioseg"]
    plugin.toggle_panel(True)
    panel = plugin.panel
    panel.sat_combo.setLayer(sat)
    panel.map_combo.setLayer(areas)
    panel.query.setCurrentText("schools")
    from socioseg.plugin.task import DetectTask
    panel.start(DetectTask(panel.params(), panel._finished), run_now=True)
    iface.mapCanvas().refreshAllLayers()
    QTimer.singleShot(4000, shoot)


QTimer.singleShot(1500, run)

"""Processing algorithm "Build a training set": `python -m training.dataset` over QGIS layers.

QGIS renders the satellite layer (and the map layers, when given: the map as QGIS shows it) onto one
grid over the area, as for detection (capture.py), and writes the OpenStreetMap layers' features to a
GeoPackage (other_tags kept); the backend's Python then builds the dataset from those files. The grid's
origin is put on whole pixels of the resolution, the lattice the builder uses, so its reads of the
rendered files are the rendered pixels themselves.
"""
from __future__ import annotations

import math
import os
import shutil
import subprocess
import tempfile

from qgis.core import (QgsCoordinateTransform, QgsMapLayer, QgsProcessing, QgsProcessingAlgorithm, QgsProcessingException,
                       QgsProcessingParameterBoolean, QgsProcessingParameterEnum, QgsProcessingParameterExtent,
                       QgsProcessingParameterFolderDestination, QgsProcessingParameterMultipleLayers,
                       QgsProcessingParameterNumber, QgsProcessingParameterRasterLayer, QgsRectangle)

LEVELS = ["name", "class", "function"]


class BuildTrainingSetAlgorithm(QgsProcessingAlgorithm):
    SATELLITE, OSM, MAP, EXTENT, RESOLUTION, TILE_SIZE, PER_LEVEL, OVERWRITE, OUTPUT = (
        "SATELLITE", "OSM", "MAP", "EXTENT", "RESOLUTION", "TILE_SIZE", "PER_LEVEL", "OVERWRITE", "OUTPUT")

    def name(self):
        return "build_training_set"

    def displayName(self):
        return "Build a training set"

    def shortHelpString(self):
        return ("Writes a SocioSeg-format dataset (train / val / test split by area, one tile apart) for "
                "fine-tuning the model on your city: satellite tiles, the map as the MAP layers show it (or, "
                "without MAP layers, drawn from the OpenStreetMap layers), and masks of the OpenStreetMap "
                "places at the three query levels (name, class, function). OSM layers: the OpenStreetMap "
                "data (e.g. the multipolygons and points layers of a .osm.pbf). Then train with python -m "
                "training.sft / training.grpo --data OUTPUT (README: Fine-tune for your own city).")

    def createInstance(self):
        return BuildTrainingSetAlgorithm()

    def initAlgorithm(self, config=None):
        self.addParameter(QgsProcessingParameterRasterLayer(self.SATELLITE, "Satellite layer"))
        self.addParameter(QgsProcessingParameterMultipleLayers(
            self.OSM, "OpenStreetMap layers (the places and their tags)", QgsProcessing.TypeVectorAnyGeometry))
        self.addParameter(QgsProcessingParameterMultipleLayers(
            self.MAP, "Map layers (as the model will see the map; default: drawn from the OSM layers)",
            QgsProcessing.TypeMapLayer, optional=True))
        self.addParameter(QgsProcessingParameterExtent(self.EXTENT, "Area", optional=True))
        self.addParameter(QgsProcessingParameterNumber(self.RESOLUTION, "Resolution (m/px)",
                                                       QgsProcessingParameterNumber.Double, 0.5,
                                                       minValue=0.05, maxValue=100.0))
        self.addParameter(QgsProcessingParameterNumber(self.TILE_SIZE, "Tile size (px; released model: 768)",
                                                       QgsProcessingParameterNumber.Integer, 768,
                                                       minValue=64, maxValue=4096))
        self.addParameter(QgsProcessingParameterNumber(
            self.PER_LEVEL, "Samples per level and split (-1: balanced to the smallest level; 0: all)",
            QgsProcessingParameterNumber.Integer, -1, minValue=-1))
        self.addParameter(QgsProcessingParameterBoolean(self.OVERWRITE, "Replace the output folder", False))
        self.addParameter(QgsProcessingParameterFolderDestination(self.OUTPUT, "Dataset folder"))

    def processAlgorithm(self, parameters, context, feedback):
        from ..backend.errors import Cancelled, InputError
        from .capture import CARTO_BACKGROUND, plan_grid, render_map_to_geotiff, render_to_geotiff, units_per_metre
        from .capture import write_features
        from .settings import PluginSettings
        from .worker_client import worker_env, worker_python

        sat = self.parameterAsRasterLayer(parameters, self.SATELLITE, context)
        osm = self.parameterAsLayerList(parameters, self.OSM, context)
        maps = self.parameterAsLayerList(parameters, self.MAP, context) or []
        res_m = self.parameterAsDouble(parameters, self.RESOLUTION, context)
        tile = self.parameterAsInt(parameters, self.TILE_SIZE, context)
        per_level = self.parameterAsInt(parameters, self.PER_LEVEL, context)
        out = self.parameterAsString(parameters, self.OUTPUT, context)
        if sat is None or not osm:
            raise QgsProcessingException("choose a Satellite layer and one or more OpenStreetMap layers")
        crs = context.project().crs() if context.project() and context.project().crs().isValid() else sat.crs()
        if not crs.isValid():
            raise QgsProcessingException("the project has no valid CRS: set one in Project > Properties > CRS")
        tc = context.transformContext()
        if parameters.get(self.EXTENT):
            extent = self.parameterAsExtent(parameters, self.EXTENT, context, crs)
        else:
            extent = QgsCoordinateTransform(sat.crs(), crs, tc).transformBoundingBox(sat.extent())
            box = QgsRectangle()
            for layer in osm:
                box.combineExtentWith(QgsCoordinateTransform(layer.crs(), crs, tc).transformBoundingBox(layer.extent()))
            extent = extent.intersect(box)
        if extent.isEmpty():
            raise QgsProcessingException("the Satellite layer and the OpenStreetMap layers do not overlap: set an Area")
        res = res_m * units_per_metre(crs)
        extent = QgsRectangle(math.floor(extent.xMinimum() / res) * res, extent.yMinimum(),
                              extent.xMaximum(), math.ceil(extent.yMaximum() / res) * res)
        folder = tempfile.mkdtemp(prefix="socioseg-dataset-")
        try:
            grid = plan_grid(extent, crs, res_m)
            feedback.setProgressText("rendering the satellite layer")
            if not render_to_geotiff([sat], grid, crs, os.path.join(folder, "satellite.tif"),
                                     progress=lambda f: feedback.setProgress(30 * f), cancel=feedback.isCanceled):
                raise QgsProcessingException(f"the Satellite layer '{sat.name()}' has no pixels in this Area")
            args = ["--satellite", os.path.join(folder, "satellite.tif"), "--osm", os.path.join(folder, "osm.gpkg")]
            if maps:
                feedback.setProgressText("rendering the map layers")
                vector_only = all(m.type() == QgsMapLayer.VectorLayer for m in maps)
                if not render_map_to_geotiff(maps, grid, crs, os.path.join(folder, "map.tif"),
                                             CARTO_BACKGROUND if vector_only else None,
                                             lambda f: feedback.setProgress(30 + 20 * f), feedback.isCanceled):
                    raise QgsProcessingException("the Map layers have no pixels in this Area")
                args += ["--map", os.path.join(folder, "map.tif")]
            feedback.setProgressText("writing the OpenStreetMap features")
            if write_features(osm, crs, extent, os.path.join(folder, "osm.gpkg")) == 0:
                raise QgsProcessingException("the OpenStreetMap layers have no features in this Area")
            a, _, x0, _, e, y0 = grid.transform
            args += ["--resolution", repr(res_m), "--tile-size", str(tile), "--out", out,
                     "--bbox", repr(x0), repr(y0 + e * grid.height), repr(x0 + a * grid.width), repr(y0)]
            if per_level >= 0:
                args += ["--per-level", str(per_level)]
            if self.parameterAsBool(parameters, self.OVERWRITE, context):
                args.append("--overwrite")
            self._run(worker_python(PluginSettings.load().python), args, worker_env, feedback)
        except (Cancelled, InputError) as exc:
            raise QgsProcessingException(str(exc)) from None
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return {self.OUTPUT: out}

    @staticmethod
    def _run(python: str, args: list[str], worker_env, feedback) -> None:
        from .deps import PLUGIN_DIR
        from .environment import follow_lines

        feedback.setProgressText("building the dataset")
        try:
            proc = subprocess.Popen([python, "-m", "training.dataset", *args], cwd=PLUGIN_DIR,
                                    env=worker_env(python), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, encoding="utf-8", errors="replace")
        except OSError as exc:
            raise QgsProcessingException(f"cannot start the backend's Python {python!r}: {exc}") from None
        lines: list[str] = []

        def on_line(line: str) -> None:
            for part in line.replace("\r", "\n").splitlines():
                part = part.strip()
                if part.startswith("tiles ") and "/" in part:
                    done, total = part[6:].split("/", 1)
                    if done.isdigit() and total.isdigit() and int(total):
                        feedback.setProgress(50 + 50 * int(done) / int(total))
                elif part:
                    lines.append(part)
                    feedback.pushInfo(part)

        if not follow_lines(proc, proc.stdout, on_line, feedback.isCanceled):
            raise QgsProcessingException("cancelled")
        if proc.wait() != 0:
            errors = [ln[len("error: "):] for ln in lines if ln.startswith("error: ")]
            raise QgsProcessingException(errors[-1] if errors else "building the dataset failed:\n"
                                         + "\n".join(lines[-20:]))

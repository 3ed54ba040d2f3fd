"""Processing provider `socioseg` with the algorithm `detect_entities` (batch, models, processing.run)."""
from __future__ import annotations

import os

from qgis.core import (QgsCoordinateTransform, QgsFeatureSink, QgsProcessing, QgsProcessingAlgorithm, QgsProcessingException,
                       QgsProcessingParameterEnum, QgsProcessingParameterExtent,
                       QgsProcessingParameterFeatureSink, QgsProcessingParameterMapLayer,
                       QgsProcessingParameterNumber, QgsProcessingParameterRasterLayer,
                       QgsProcessingParameterString, QgsProcessingProvider, QgsWkbTypes)
from qgis.PyQt.QtGui import QIcon

from .deps import PLUGIN_DIR
from .settings import ENGINE_DEFAULT, ENGINE_VLM, PluginSettings

TASK_CHOICES = ["auto", "name", "class", "function"]
ENGINE_CHOICES = [ENGINE_DEFAULT, ENGINE_VLM]


class DetectEntitiesAlgorithm(QgsProcessingAlgorithm):
    SATELLITE, MAP, QUERY, TASK, EXTENT, RESOLUTION, ENGINE, OUTPUT = (
        "SATELLITE", "MAP", "QUERY", "TASK", "EXTENT", "RESOLUTION", "ENGINE", "OUTPUT")

    def name(self):
        return "detect_entities"

    def displayName(self):
        return "Detect socially defined places"

    def shortHelpString(self):
        return ("Finds places such as schools, parks or a named place in a satellite layer read together "
                "with a map layer, and writes their outlines. ENGINE 0 is the weight-free map reader + "
                "GrabCut (default), 1 the SocioReasoner vision-language model with the segmenter set in "
                "the plugin settings. Without EXTENT the overlap of both layers is used.")

    def createInstance(self):
        return DetectEntitiesAlgorithm()

    def initAlgorithm(self, config=None):
        self.addParameter(QgsProcessingParameterRasterLayer(self.SATELLITE, "Satellite layer"))
        self.addParameter(QgsProcessingParameterMapLayer(self.MAP, "Map layer (raster or vector)"))
        self.addParameter(QgsProcessingParameterString(self.QUERY, "What to find", defaultValue="schools"))
        self.addParameter(QgsProcessingParameterEnum(self.TASK, "Task level", TASK_CHOICES, defaultValue=0))
        self.addParameter(QgsProcessingParameterExtent(self.EXTENT, "Area", optional=True))
        self.addParameter(QgsProcessingParameterNumber(self.RESOLUTION, "Resolution (m/px)",
                                                       QgsProcessingParameterNumber.Double, 1.0,
                                                       minValue=0.05, maxValue=100.0))
        self.addParameter(QgsProcessingParameterEnum(self.ENGINE, "Engine", ["Map reader + GrabCut (no weights)",
                                                                          "SocioReasoner + segmenter"],
                                                     defaultValue=0, optional=True))
        self.addParameter(QgsProcessingParameterFeatureSink(self.OUTPUT, "Detected places",
                                                            QgsProcessing.TypeVectorPolygon))

    def processAlgorithm(self, parameters, context, feedback):
        from ..backend.errors import Cancelled, SocioSegError
        from .task import DetectParams, run_detection
        from .worker_client import WorkerError

        sat = self.parameterAsRasterLayer(parameters, self.SATELLITE, context)
        mp = self.parameterAsLayer(parameters, self.MAP, context)
        query = self.parameterAsString(parameters, self.QUERY, context).strip()
        task = TASK_CHOICES[self.parameterAsEnum(parameters, self.TASK, context)]
        engine = ENGINE_CHOICES[self.parameterAsEnum(parameters, self.ENGINE, context)]
        res = self.parameterAsDouble(parameters, self.RESOLUTION, context)
        if sat is None or mp is None:
            raise QgsProcessingException("both a satellite layer and a map layer are required")
        crs = context.project().crs() if context.project() and context.project().crs().isValid() else sat.crs()
        if parameters.get(self.EXTENT):
            extent = self.parameterAsExtent(parameters, self.EXTENT, context, crs)
        else:
            t_sat = QgsCoordinateTransform(sat.crs(), crs, context.transformContext())
            t_map = QgsCoordinateTransform(mp.crs(), crs, context.transformContext())
            extent = t_sat.transformBoundingBox(sat.extent()).intersect(t_map.transformBoundingBox(mp.extent()))
            if extent.isEmpty():
                raise QgsProcessingException("the satellite and map layers do not overlap")
        settings = PluginSettings.load()
        reasoner, segmenter = settings.engine_specs(engine)
        params = DetectParams(sat, mp, query, None if task == "auto" else task, extent, crs, res, reasoner,
                              segmenter, settings.device, settings.max_new_tokens, settings.tile_size,
                              settings.overlap, settings.max_tiles, settings.python)

        def progress(frac, msg):
            feedback.setProgress(100.0 * frac)
            feedback.setProgressText(msg)

        try:
            detection = run_detection(params, progress, feedback.isCanceled)
        except Cancelled:
            return {self.OUTPUT: None}
        except (SocioSegError, WorkerError) as exc:
            raise QgsProcessingException(str(exc)) from None
        from .layers import _fields, features_from

        fields = _fields()
        sink, dest = self.parameterAsSink(parameters, self.OUTPUT, context, fields, QgsWkbTypes.MultiPolygon, crs)
        for f in features_from(detection, fields):
            sink.addFeature(f, QgsFeatureSink.FastInsert)
        feedback.pushInfo(f"found {len(detection['entities'])} place(s) for '{query}'")
        return {self.OUTPUT: dest}


class SocioSegProvider(QgsProcessingProvider):
    def id(self):
        return "socioseg"

    def name(self):
        return "SocioSeg"

    def icon(self):
        return QIcon(os.path.join(PLUGIN_DIR, "resources", "icon.png"))

    def loadAlgorithms(self):
        self.addAlgorithm(DetectEntitiesAlgorithm())

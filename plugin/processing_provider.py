"""Processing provider `socioseg` with the algorithm `detect_entities` (batch, models, processing.run)."""
from __future__ import annotations

import os

from qgis.core import (QgsCoordinateTransform, QgsProject, QgsRectangle, QgsFeatureSink, QgsProcessing, QgsProcessingAlgorithm, QgsProcessingException,
                       QgsProcessingParameterEnum, QgsProcessingParameterExtent,
                       QgsProcessingParameterFeatureSink, QgsProcessingParameterMultipleLayers,
                       QgsProcessingParameterNumber, QgsProcessingParameterRasterLayer,
                       QgsProcessingParameterString, QgsProcessingProvider, QgsWkbTypes)
from qgis.PyQt.QtGui import QIcon

from .deps import PLUGIN_DIR
from .settings import ENGINE_DEFAULT, ENGINE_VLM, PluginSettings

TASK_CHOICES = ["auto", "name", "class", "function"]
ENGINE_CHOICES = [ENGINE_DEFAULT, ENGINE_VLM]


def _default_layers() -> tuple[str | None, list[str]]:
    """The project's first raster that is not a result as the satellite, and the panel's default map
    layers (never the satellite, never a result), so the dialog does not offer the satellite as map."""
    from .layers import default_map_layers, default_satellite

    project = QgsProject.instance()
    sat = default_satellite(project)
    maps = default_map_layers(project, sat.id() if sat else None)
    return (sat.id() if sat else None), [m.id() for m in maps]


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
        sat, maps = _default_layers()
        self.addParameter(QgsProcessingParameterRasterLayer(self.SATELLITE, "Satellite layer", defaultValue=sat))
        self.addParameter(QgsProcessingParameterMultipleLayers(
            self.MAP, "Map layers (raster or vector, read together)", QgsProcessing.TypeMapLayer,
            defaultValue=maps or None))
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
        from .task import DetectParams, plugin_wording, run_detection
        from .worker_client import WorkerError

        sat = self.parameterAsRasterLayer(parameters, self.SATELLITE, context)
        maps = self.parameterAsLayerList(parameters, self.MAP, context)
        query = self.parameterAsString(parameters, self.QUERY, context).strip()
        task = TASK_CHOICES[self.parameterAsEnum(parameters, self.TASK, context)]
        engine = ENGINE_CHOICES[self.parameterAsEnum(parameters, self.ENGINE, context)]
        res = self.parameterAsDouble(parameters, self.RESOLUTION, context)
        if sat is None or not maps:
            raise QgsProcessingException("choose a Satellite layer and one or more Map layers")
        crs = context.project().crs() if context.project() and context.project().crs().isValid() else sat.crs()
        if parameters.get(self.EXTENT):
            extent = self.parameterAsExtent(parameters, self.EXTENT, context, crs)
        else:
            t_sat = QgsCoordinateTransform(sat.crs(), crs, context.transformContext())
            map_box = QgsRectangle()
            for mp in maps:
                t_map = QgsCoordinateTransform(mp.crs(), crs, context.transformContext())
                map_box.combineExtentWith(t_map.transformBoundingBox(mp.extent()))
            extent = t_sat.transformBoundingBox(sat.extent()).intersect(map_box)
            if extent.isEmpty():
                raise QgsProcessingException("the Satellite layer and the Map layers do not overlap: set an Area")
        settings = PluginSettings.load()
        from .deps import explain_missing
        from .worker_client import missing_in_worker, worker_python

        python = worker_python(settings.python)     # before rendering: a Python without the packages says so now
        missing = missing_in_worker(python)
        if missing:
            raise QgsProcessingException(explain_missing(missing, "SocioSeg", python))
        reasoner, segmenter = settings.engine_specs(engine)
        params = DetectParams(sat, maps, query, None if task == "auto" else task, extent, crs, res, reasoner,
                              segmenter, settings.device, settings.generation(), settings.tile_plan(),
                              settings.python, outline=settings.outline)

        def progress(frac, msg):
            feedback.setProgress(100.0 * frac)
            feedback.setProgressText(msg)

        try:
            detection = run_detection(params, progress, feedback.isCanceled, feedback.pushWarning)
        except Cancelled:
            raise QgsProcessingException("cancelled") from None
        except SocioSegError as exc:
            raise QgsProcessingException(plugin_wording(str(exc))) from None
        except WorkerError as exc:
            raise QgsProcessingException(f"{exc}. Check Plugins > SocioSeg > Settings > Python for the backend") from None
        from .layers import _fields, features_from

        fields = _fields()
        sink, dest = self.parameterAsSink(parameters, self.OUTPUT, context, fields, QgsWkbTypes.MultiPolygon, crs)
        for f in features_from(detection, fields):
            sink.addFeature(f, QgsFeatureSink.FastInsert)
        feedback.pushInfo(f"found {len(detection.entities)} place(s) for '{query}'")
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
        from .processing_dataset import BuildTrainingSetAlgorithm
        self.addAlgorithm(BuildTrainingSetAlgorithm())

"""The attribute table of detected places (plain Python: the QGIS plugin reads it too)."""

# Field order and types of the output table; names fit Shapefile's 10-character limit.
FIELDS = [("query", str), ("task", str), ("name", str), ("tiles", str), ("n_boxes1", int),
          ("n_boxes2", int), ("refined", int), ("reasoner", str), ("segmenter", str), ("score", float),
          ("area_m2", float), ("note", str), ("created", str),
          # how sure the map is of the place's class, and what on the map says so (output/evidence.py)
          ("certain", int), ("evidence", str)]

"""The QGIS side: thin Qt/QGIS layer over the backend. Never imports torch at import time."""

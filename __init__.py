"""QGIS plugin entry point. Kept import-light: nothing heavy (torch, rasterio) loads with QGIS."""


def classFactory(iface):  # noqa: N802 (QGIS's name)
    from .plugin.main import SocioSegPlugin

    return SocioSegPlugin(iface)

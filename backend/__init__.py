"""Backend of the socio-semantic segmentation plugin: no Qt, importable without torch."""
__version__ = "0.1.0"

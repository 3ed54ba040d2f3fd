"""Errors the user can act on: each message names the fix. The CLI prints them without a traceback."""


class SocioSegError(Exception):
    """Base class for errors that carry a user-facing message."""


class InputError(SocioSegError):
    """Bad or unusable input data (rasters, vector maps, extents, queries)."""


class ModelNotFoundError(SocioSegError):
    """A model or checkpoint could not be found or loaded."""


class DependencyError(SocioSegError):
    """An optional Python dependency is missing."""


class Cancelled(SocioSegError):
    """The caller asked the work to stop."""

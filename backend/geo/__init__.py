"""Georeferenced grids, tiles, raster and vector map I/O."""

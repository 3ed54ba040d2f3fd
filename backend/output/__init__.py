"""Detected places as files: vector output, previews, the attribute table."""

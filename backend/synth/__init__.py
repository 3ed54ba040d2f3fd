"""Synthetic towns and the bundled sample (they prove the machinery, not quality)."""

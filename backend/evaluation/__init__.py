"""Scoring: the paper's metrics and truth from vector files."""

"""Executors drive the three steps of a run (backend.pipeline.detect: plan, run_tiles, merge): `local`
in this process, `ray` on the workers of a Ray cluster."""

EXECUTORS = ("local", "ray")

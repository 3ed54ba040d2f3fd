"""The two-stage pipeline: prompts and parsing, render, stages over tiles, a whole area."""

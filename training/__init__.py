"""Training and evaluation: two-stage GRPO (trl + peft), the paper's rewards, SFT, SocioSeg metrics.

Everything reuses the backend's prompts, parsing, rendering and segmenters, so what is trained is what
the plugin runs.
"""

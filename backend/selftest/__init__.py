"""The self-test: tiny models of the real classes, built from configs, and a run through them."""

"""YAML defaults overridable by flags, shared by the GRPO and SFT entry points."""
from __future__ import annotations

import argparse
import os

import yaml

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


def load_config(argv, default_yaml: str, prog: str, description: str) -> argparse.Namespace:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=os.path.join(CONFIG_DIR, default_yaml))
    known, _ = pre.parse_known_args(argv)
    with open(known.config, encoding="utf-8") as f:
        defaults = yaml.safe_load(f) or {}
    ap = argparse.ArgumentParser(prog=prog, description=description)
    ap.add_argument("--config", default=known.config, help="YAML file of defaults")
    for key, value in defaults.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            ap.add_argument(flag, type=lambda s: s.lower() in ("1", "true", "yes", "on"), default=value,
                            metavar="true|false")
        elif isinstance(value, list):
            ap.add_argument(flag, nargs="+", default=value)
        elif value is None:
            ap.add_argument(flag, default=None)
        else:
            ap.add_argument(flag, type=type(value), default=value)
    return ap.parse_args(argv)

"""`python -m backend.server_check URL [--model NAME]`: can this Python reach a model server?

The plugin's Settings > Model server > Test connection runs this with the backend's Python and the same
environment the worker gets (the API key in contract.API_KEY_ENV), so a passing test means the worker's
requests will get through too. Prints one JSON line {"url", "models", "key_sent"} and exits 0, or one
ERROR line (contract.error_line) naming the URL and exits 2.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

from . import contract
from .errors import InputError

TIMEOUT = 10.0      # seconds: a test answers quickly or says why, it does not wait like a run


def list_models(url: str, model: str | None = None, timeout: float = TIMEOUT) -> dict:
    """The models the server at `url` lists on /models; `model`, when given, must be one of them."""
    try:
        import openai
    except ImportError as exc:
        raise InputError(f"the backend's Python lacks the openai package ({exc}): install requirements-plugin.txt") from None
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise InputError(f"the model server URL {url!r} must start with http:// or https:// (e.g. http://gpu-box:8000/v1)")
    key = os.environ.get(contract.API_KEY_ENV) or os.environ.get("OPENAI_API_KEY")
    from .reasoners.openai_server import read_json_body, served_models, tls_failure

    client = openai.OpenAI(base_url=url, api_key=key or "EMPTY", timeout=timeout, max_retries=0)
    try:
        data, body = read_json_body(client.models.with_raw_response.list(), url)
    except openai.APIConnectionError as exc:     # includes timeouts
        raise tls_failure(url, exc) or InputError(f"cannot reach the model server at {url} ({exc.__cause__ or exc}): "
                                                  "check that it runs and the URL") from None
    except openai.AuthenticationError:
        raise InputError(f"the model server at {url} " + ("refused the API key that was sent" if key else
                                                          "asks for an API key and none was sent")) from None
    except openai.APIStatusError as exc:
        raise InputError(f"the model server at {url} answered {exc.status_code} to /models: is this an "
                         "OpenAI-compatible URL (it usually ends in /v1)?") from None
    models = served_models(data, url, body)
    if not models:
        raise InputError(f"the model server at {url} serves no model")
    if model and model not in models:
        raise InputError(f"the model server at {url} does not serve {model!r}; it serves {', '.join(models)}")
    return {"url": url, "models": models, "key_sent": bool(key)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m backend.server_check", description=__doc__.splitlines()[0])
    ap.add_argument("url")
    ap.add_argument("--model", default=None, help="the served model name to look for")
    ap.add_argument("--timeout", type=float, default=TIMEOUT)
    args = ap.parse_args(argv)
    try:
        if not (math.isfinite(args.timeout) and args.timeout > 0):
            raise InputError(f"--timeout must be a number of seconds above 0, not {args.timeout}")
        print(json.dumps(list_models(args.url, args.model, args.timeout)), flush=True)
    except InputError as exc:
        print(contract.error_line(str(exc)), flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

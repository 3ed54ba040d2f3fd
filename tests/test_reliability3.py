"""The third reliability sweep (issue 20): a model server's odd answers, runs where no tile was
answered, damaged or odd inputs, leftovers, unclear messages.

Table-driven like tests/test_reliability.py: every case runs the real entry point (`python -m backend
detect` in process, `run-scene`, `download`, `training.evaluate`) on real files, against real HTTP
servers on 127.0.0.1 that misbehave on purpose (they are the thing under test: a server that answers
HTML or trickles bytes), and asserts the exit code, the message, and that no input changed.
"""
import json
import os
import re
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pyogrio
import pytest

from backend.cli import main
from backend.resources import SAMPLE_DIR
from test_reliability import OPTIONS, SMALL_BBOX, snapshot

TWO_TILES = ["499800", "4056700", "501000", "4057200"]     # 1200 x 500 px: two tiles of the sample town
GOOD_STAGE1 = '<think>ok</think><answer>[{"bbox_2d": [40, 40, 200, 200]}]</answer>'
GOOD_STAGE2 = '<think>ok</think><answer>[{"bbox_2d": [40, 40, 200, 200], "points": [[120, 120]]}]</answer>'


def _completion(content, finish="stop", **message):
    return {"id": "c", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "finish_reason": finish,
                         "message": {"role": "assistant", "content": content, **message}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 7, "total_tokens": 8}}


class FakeServer:
    """An OpenAI-compatible server on 127.0.0.1 whose /models and /chat/completions answers are set
    per case (`models`, `chat`): real sockets, real HTTP, the real openai client on the other end."""

    def __init__(self):
        self.models = "ok"
        self.chat = "ok"
        self.requests = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def send(self, code, body, ctype="application/json"):
                raw = body if isinstance(body, bytes) else (body if isinstance(body, str) else json.dumps(body)).encode()
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self):  # noqa: N802
                m = fake.models
                if m == "html":
                    return self.send(200, "<html><body><form>Sign in to the proxy</form></body></html>", "text/html")
                if m == "no-data":
                    return self.send(200, {"object": "list", "models": ["m"]})
                if m == "truncated":
                    return self.send(200, '{"object": "list", "data": [{"id": "m"')
                self.send(200, {"object": "list", "data": [{"id": "m", "object": "model", "created": 0,
                                                            "owned_by": "me"}]})

            def do_POST(self):  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with threading.Lock():
                    fake.requests += 1
                    n = fake.requests
                mode = fake.chat
                good = _completion(GOOD_STAGE1 if n % 2 else GOOD_STAGE2)
                if mode == "truncated-json":
                    return self.send(200, json.dumps(good)[:60])
                if mode == "html-as-json":
                    return self.send(200, "<html><title>Login</title><body>SSO</body></html>")
                if mode == "html":
                    return self.send(200, "<html><title>Login</title><body>SSO</body></html>", "text/html")
                if mode == "error-200":
                    return self.send(200, {"error": {"message": "model overloaded", "code": 503}})
                if mode == "a-list":
                    return self.send(200, [1, 2, 3])
                if mode == "no-choices":
                    return self.send(200, {**good, "choices": []})
                if mode == "content-number":
                    return self.send(200, _completion(42))
                if mode == "empty-body":
                    return self.send(200, b"")
                if mode == "null-length":
                    return self.send(200, _completion(None, "length"))
                if mode == "cut-off":      # a think block that runs into the budget
                    return self.send(200, _completion("<think>" + "the school is " * 200, "length"))
                if mode == "huge-no-tags":
                    return self.send(200, _completion("school " * 300_000))
                if mode == "second-tile-unusable" and n > 2:
                    return self.send(200, _completion("I cannot see any school here."))
                if mode == "trickle":      # headers at once, then a byte every 0.2 s
                    raw = json.dumps(good).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(raw)))
                    self.end_headers()
                    try:
                        for k in range(min(len(raw), 100)):     # bounded: at most 20 s
                            self.wfile.write(raw[k:k + 1])
                            self.wfile.flush()
                            time.sleep(0.2)
                    except OSError:
                        pass
                    return
                self.send(200, good)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def fake():
    f = FakeServer()
    yield f
    f.server.shutdown()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = tmp_path_factory.mktemp("world3")
    for name in ("satellite.tif", "map.tif", "map.gpkg", "truth.gpkg"):
        shutil.copy(os.path.join(SAMPLE_DIR, name), w / name)
    (w / "a_file").write_bytes(b"not a folder")
    return w


def detect_args(w, *extra, out="out.gpkg", sat="satellite.tif", map_="map.gpkg", query="schools"):
    return ["detect", "--satellite", str(w / sat), "--map", str(w / map_), "--query", query,
            "--out", out if os.path.isabs(out) else str(w / out), *extra]


def served(w, f, *extra, out="served.gpkg", bbox=SMALL_BBOX):
    return detect_args(w, "--reasoner", f"openai:{f.url}", "--bbox", *bbox, "--max-new-tokens", "256",
                       *extra, out=out)


def _last_line(err: str) -> str:
    return err.strip().splitlines()[-1] if err.strip() else ""


# (id, server modes (models, chat), argv builder (world, fake), exit code, regexes the last line must match)
SERVER_CASES = [
    ("chat-truncated-json", ("ok", "truncated-json"), lambda w, f: served(w, f), 2,
     [r"the server at http://127\.0\.0\.1:\d+/v1 did not answer in the OpenAI format: \{\"id\": \"c\""]),
    ("chat-html-as-json", ("ok", "html-as-json"), lambda w, f: served(w, f), 2,
     [r"did not answer in the OpenAI format: <html><title>Login"]),
    ("chat-html", ("ok", "html"), lambda w, f: served(w, f), 2, [r"did not answer in the OpenAI format: <html>"]),
    ("chat-error-with-200", ("ok", "error-200"), lambda w, f: served(w, f), 2,
     [r"did not answer in the OpenAI format: \{\"error\": \{\"message\": \"model overloaded\""]),
    ("chat-a-json-list", ("ok", "a-list"), lambda w, f: served(w, f), 2,
     [r"did not answer in the OpenAI format: \[1, 2, 3\]"]),
    ("chat-no-choices", ("ok", "no-choices"), lambda w, f: served(w, f), 2,
     [r"did not answer in the OpenAI format: .*\"choices\": \[\]"]),
    ("chat-content-a-number", ("ok", "content-number"), lambda w, f: served(w, f), 2,
     [r"did not answer in the OpenAI format: .*\"content\": 42"]),
    ("chat-empty-body", ("ok", "empty-body"), lambda w, f: served(w, f), 2,
     [r"did not answer in the OpenAI format: \(an empty body\)"]),
    ("models-html", ("html", "ok"), lambda w, f: served(w, f), 2,
     [r"did not answer in the OpenAI format: <html><body><form>Sign in"]),
    ("models-other-json", ("no-data", "ok"), lambda w, f: served(w, f), 2,
     [r"did not answer in the OpenAI format: \{\"object\": \"list\", \"models\""]),
    ("models-truncated", ("truncated", "ok"), lambda w, f: served(w, f), 2,
     [r"did not answer in the OpenAI format: \{\"object\": \"list\", \"data\": \[\{\"id\": \"m\"$"]),
    # Every answer unusable: an error naming the cause, never "found 0 entities".
    ("all-answers-cut-at-the-budget", ("ok", "null-length"), lambda w, f: served(w, f), 2,
     [r"none of the 1 tile\(s\) got a usable answer", r"raise --max-new-tokens \(now 256\)"]),
    ("all-answers-cut-in-the-think-block", ("ok", "cut-off"), lambda w, f: served(w, f, bbox=TWO_TILES), 2,
     [r"none of the 2 tile\(s\) got a usable answer", r"response budget of 256 tokens"]),
    ("all-answers-without-tags", ("ok", "huge-no-tags"), lambda w, f: served(w, f), 2,
     [r"none of the 1 tile\(s\) got a usable answer", r"no usable <answer> part", r"--dump DIR"]),
    # A server that speaks plain HTTP, asked over https.
    ("https-to-a-plain-http-server", ("ok", "ok"),
     lambda w, f: detect_args(w, "--reasoner", "openai:" + f.url.replace("http://", "https://"), "--bbox",
                              *SMALL_BBOX, out="served.gpkg"), 2,
     [r"TLS handshake with the model server at https://127\.0\.0\.1:\d+/v1 failed",
      r"use http://127\.0\.0\.1:\d+/v1"]),
]


@pytest.mark.parametrize("case", SERVER_CASES, ids=[c[0] for c in SERVER_CASES])
def test_server_sweep(case, world, fake, capsys):
    _, (models, chat), argv, code, wanted = case
    fake.models, fake.chat, fake.requests = models, chat, 0
    before = snapshot(world)
    t = time.perf_counter()
    rc = main(argv(world, fake))
    err = capsys.readouterr().err
    message = _last_line(err)
    assert rc == code, err[-3000:]
    assert "Traceback" not in err and "internal error" not in err
    for pattern in wanted:
        assert re.search(pattern, message), (pattern, message)
    assert len(message) < 1000                       # the body is cut to 200 characters
    assert set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", message)) <= OPTIONS, message
    # Nothing written; the tile folder of the failed run (kept for --resume) aside.
    assert {k: v for k, v in snapshot(world).items() if ".tiles/" not in k} == before
    shutil.rmtree(world / "served.gpkg.tiles", ignore_errors=True)
    assert time.perf_counter() - t < 60


def test_a_partly_answered_run_says_k_of_n_in_the_summary_and_the_output(world, fake, capsys):
    fake.models, fake.chat, fake.requests = "ok", "second-tile-unusable", 0
    out = world / "partial.gpkg"
    rc = main(served(world, fake, "--concurrency", "1", out=str(out), bbox=TWO_TILES))
    captured = capsys.readouterr()
    try:
        assert rc == 0, captured.err
        assert re.search(r"found \d+ entit\w+ for 'schools' in [\d.]+ s \(1 of 2 tiles answered\)", captured.out)
        assert "WARNING: only 1 of 2 tiles answered" in captured.err
        assert pyogrio.read_info(str(out))["layer_metadata"] == {"tiles_answered": "1 of 2"}
    finally:
        out.unlink(missing_ok=True)


def test_a_trickling_server_is_held_to_the_request_timeout(world, fake, capsys):
    """--request-timeout is a deadline for the whole request: a server sending a byte every 0.2 s
    (each socket read well within the timeout) is given up after 2 s, not after the whole body."""
    fake.models, fake.chat = "ok", "trickle"
    t = time.perf_counter()
    rc = main(served(world, fake, "--request-timeout", "2"))
    took = time.perf_counter() - t
    message = _last_line(capsys.readouterr().err)
    assert rc == 2 and re.search(r"did not answer within 2 s \(--request-timeout\)", message), message
    assert took < 12, took        # the trickle alone would take 20 s


@pytest.mark.parametrize("value", ["0", "-5", "nan", "inf", "soon"])
def test_request_timeout_is_refused_before_any_work(world, fake, capsys, value):
    fake.models, fake.chat, fake.requests = "ok", "ok", 0
    with pytest.raises(SystemExit) as exc:
        main(served(world, fake, "--request-timeout", value))
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "argument --request-timeout: must be a number of seconds" in err
    assert "grid:" not in err and fake.requests == 0


def test_server_check_names_a_reply_that_is_not_openai(fake, capsys):
    from backend.server_check import main as check

    fake.models = "html"
    assert check([fake.url]) == 2
    line = capsys.readouterr().out.strip()
    assert re.match(r"ERROR the server at http://127\.0\.0\.1:\d+/v1 did not answer in the OpenAI format: <html>",
                    line), line
    fake.models = "ok"
    assert check([fake.url.replace("http://", "https://")]) == 2
    assert "TLS handshake" in capsys.readouterr().out


@pytest.mark.parametrize("bbox", [["-1e7", "-1e7", "1e7", "1e7"], ["-1E7", "-1e+7", "1e7", "1e7"],
                                  ["-.5e8", "-1e7", "1e7", "1e7"]])
def test_negative_numbers_in_bbox_are_numbers(world, capsys, bbox):
    """A --bbox larger than the inputs is clipped to them: the sample town runs whole."""
    out = world / "big_bbox.gpkg"
    rc = main(detect_args(world, "--bbox", *bbox, out=str(out)))
    err = capsys.readouterr().err
    out.unlink(missing_ok=True)
    assert rc == 0, err
    assert "expected 4 arguments" not in err


# --- run-scene (the plugin's worker) -----------------------------------------------------------
from backend import contract  # noqa: E402
from test_contract import run_scene, scene_folder  # noqa: E402,F401  (the plugin's scene folder)


def _request(folder) -> dict:
    return json.loads((folder / contract.REQUEST_FILE).read_text())


def _write_request(folder, d) -> None:
    (folder / contract.REQUEST_FILE).write_text(json.dumps(d))


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def _duplicate_tiles(folder, copies):
    d = _request(folder)
    d["tiles"] = [d["tiles"][0]] * copies
    _write_request(folder, d)


def _served_scene(folder, url, chat_mode, fake):
    fake.models, fake.chat, fake.requests = "ok", chat_mode, 0
    d = _request(folder)
    d["reasoner"], d["server"] = f"openai:{url}", {"timeout": 30, "max_retries": 0}
    d["query"] = "schools"
    _write_request(folder, d)


# (id, how to prepare the folder (folder, fake), the ERROR text's regexes)
SCENE_CASES = [
    ("result-json-is-a-folder", lambda f, s: (f / contract.RESULT_FILE).mkdir(),
     [r"holds a folder named result\.json", r"remove it and run again"]),
    ("request-nested-100000-deep", lambda f, s: (f / contract.REQUEST_FILE).write_text(_nested(100_000)),
     [r"nested too deeply"]),
    ("request-nested-in-a-field", lambda f, s: (f / contract.REQUEST_FILE).write_text(
        json.dumps(_request(f))[:-1] + ', "generation": ' + _nested(100_000) + "}"), [r"nested too deeply"]),
    ("5000-copies-of-one-tile", lambda f, s: _duplicate_tiles(f, 5000),
     [r"'tiles\[1\]' \[0, 0, 0, 0, \d+, \d+\] repeats tile tile_0_0"]),
    ("two-copies-of-one-tile", lambda f, s: _duplicate_tiles(f, 2), [r"repeats tile tile_0_0"]),
    ("every-answer-cut-at-the-budget", lambda f, s: _served_scene(f, s.url, "null-length", s),
     [r"none of the \d+ tile\(s\) got a usable answer", r"--max-new-tokens \(now 64\)"]),
    ("server-answers-html", lambda f, s: _served_scene(f, s.url, "html", s),
     [r"did not answer in the OpenAI format: <html>"]),
]


@pytest.mark.parametrize("case", SCENE_CASES, ids=[c[0] for c in SCENE_CASES])
def test_scene_sweep(case, scene_folder, fake, tmp_path, capsys):  # noqa: F811
    from backend.worker import main as worker_main

    _, prepare, wanted = case
    folder = tmp_path / "scene"
    shutil.copytree(scene_folder, folder)
    (folder / contract.RESULT_FILE).unlink(missing_ok=True)
    prepare(folder, fake)
    t = time.perf_counter()
    rc = worker_main(str(folder))
    out = capsys.readouterr().out
    errors = [m.text for m in map(contract.parse_line, out.splitlines()) if m and m.kind == "ERROR"]
    assert rc == 2 and len(errors) == 1, out[-2000:]
    for pattern in wanted:
        assert re.search(pattern, errors[0]), (pattern, errors[0])
    assert "PROGRESS" not in out or "result-json" not in case[0]      # refused before any work
    assert not (folder / contract.RESULT_FILE).is_file()
    assert time.perf_counter() - t < 60


def test_a_partly_answered_scene_warns_k_of_n(scene_folder, fake, tmp_path, capsys):  # noqa: F811
    from backend.worker import main as worker_main

    folder = tmp_path / "scene"
    shutil.copytree(scene_folder, folder)
    _served_scene(folder, fake.url, "second-tile-unusable", fake)
    d = _request(folder)
    d["server"]["concurrency"] = 1
    _write_request(folder, d)
    assert worker_main(str(folder)) == 0
    n = len(d["tiles"])
    result = contract.SceneResult.read(str(folder))
    assert f"only 1 of {n} tiles answered: the others got no usable answer from the model (their area is left " \
           "empty)" in result.warnings
    assert f"WARNING only 1 of {n} tiles answered" in capsys.readouterr().out


# --- odd inputs: NaN imagery, the antimeridian ------------------------------------------------
def _float_copy(src_path, dst_path, dtype, nan_where=None, bands=None, nodata=None):
    import rasterio

    with rasterio.open(src_path) as src:
        data = src.read().astype(dtype)
        profile = {"driver": "GTiff", "width": src.width, "height": src.height, "crs": src.crs,
                   "transform": src.transform}
    if bands:
        data = data[:bands]
    if nan_where is not None:
        data[:, nan_where(data.shape[1], data.shape[2])] = np.nan
    with rasterio.open(dst_path, "w", count=data.shape[0], dtype=dtype, nodata=nodata, **profile) as dst:
        dst.write(data)


def _west_half(h, w):
    m = np.zeros((h, w), bool)
    m[:, : w // 2] = True
    return m


def _antimeridian_inputs(w, left):
    """A 600 m scene at 16° S whose west edge is at `left` degrees, and a map with a school on each
    side of the line (OpenStreetMap writes the east one at -179.x)."""
    from affine import Affine
    from helpers import write_raster

    res = 1e-5
    rgb = np.random.default_rng(0).integers(90, 160, (600, 600, 3), dtype=np.uint8)
    write_raster(w / f"am_sat_{left}.tif", rgb, "EPSG:4326", Affine(res, 0, left, 0, -res, -16.0))
    feats = []
    for lon in (left + 0.0015, left + 0.0035):
        lon = lon - 360 if lon > 180 else lon + 360 if lon < -180 else lon
        ring = [[lon, -16.004], [lon + 0.0008, -16.004], [lon + 0.0008, -16.0032], [lon, -16.0032], [lon, -16.004]]
        feats.append({"type": "Feature", "properties": {"amenity": "school", "name": f"school at {lon:.4f}"},
                      "geometry": {"type": "Polygon", "coordinates": [ring]}})
    (w / f"am_map_{left}.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": feats}))


@pytest.fixture(scope="module")
def odd(world):
    sat = os.path.join(SAMPLE_DIR, "satellite.tif")
    _float_copy(sat, world / "nan_satellite.tif", "float32", lambda h, w: np.ones((h, w), bool))
    _float_copy(sat, world / "nan_satellite_f64_1band.tif", "float64", lambda h, w: np.ones((h, w), bool), bands=1)
    _float_copy(sat, world / "west_nan_satellite.tif", "float32", _west_half)
    _float_copy(sat, world / "float_satellite.tif", "float32")
    for left in (179.997, -180.003):
        _antimeridian_inputs(world, left)
    return world


WEST_BBOX = ["499300", "4056300", "499900", "4056800"]      # inside the sample's west half

ODD_CASES = [
    ("all-nan-float32-satellite", lambda w: detect_args(w, sat="nan_satellite.tif"), 2,
     [r"the satellite image has no valid pixels"]),
    ("all-nan-float64-one-band", lambda w: detect_args(w, sat="nan_satellite_f64_1band.tif"), 2,
     [r"the satellite image has no valid pixels"]),
    ("nan-west-half-bbox-there", lambda w: detect_args(w, "--bbox", *WEST_BBOX, sat="west_nan_satellite.tif"), 2,
     [r"the satellite image has no valid pixels"]),
    ("antimeridian-in-a-geographic-grid",
     lambda w: detect_args(w, "--crs", "EPSG:4326", sat="am_sat_179.997.tif", map_="am_map_179.997.geojson"), 2,
     [r"the inputs cross the antimeridian \(180° longitude\)", r"leave --crs out"]),
    ("antimeridian-at-minus-180-in-a-geographic-grid",
     lambda w: detect_args(w, "--crs", "EPSG:4326", sat="am_sat_-180.003.tif", map_="am_map_-180.003.geojson"), 2,
     [r"the inputs cross the antimeridian"]),
]


@pytest.mark.parametrize("case", ODD_CASES, ids=[c[0] for c in ODD_CASES])
def test_odd_input_sweep(case, odd, capsys):
    _, argv, code, wanted = case
    before = snapshot(odd)
    rc = main(argv(odd))
    err = capsys.readouterr().err
    message = _last_line(err)
    assert rc == code, err[-3000:]
    assert "Traceback" not in err and "internal error" not in err
    for pattern in wanted:
        assert re.search(pattern, message), (pattern, message)
    assert set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", message)) <= OPTIONS, message
    assert snapshot(odd) == before


def test_nan_is_no_data_but_the_rest_of_a_float_image_is_used(odd, capsys):
    """Half the satellite NaN: the NaN half is left out (no place found there), the other half is
    read as the same image the float copy without NaN gives."""
    from backend.geo.grid import read_on_grid
    from backend.pipeline.detect import load_scene

    scene = load_scene(str(odd / "west_nan_satellite.tif"), str(odd / "map.gpkg"))
    full = load_scene(str(odd / "float_satellite.tif"), str(odd / "map.gpkg"))
    sat, _, valid = scene.whole()
    sat_full, _, valid_full = full.whole()
    assert valid_full.all() and 0.3 < valid.mean() < 0.7
    west = scene.grid.width // 3
    assert not valid[:, :west].any() and valid[:, -west:].all()
    assert not sat[~valid].any()
    rgb, ok = read_on_grid(str(odd / "nan_satellite.tif"), scene.grid)
    assert not ok.any() and not rgb.any()


@pytest.mark.parametrize("left", [179.997, -180.003])
def test_a_scene_across_the_antimeridian_is_read_on_both_sides(odd, capsys, left):
    out = odd / f"am_{left}.gpkg"
    rc = main(detect_args(odd, sat=f"am_sat_{left}.tif", map_=f"am_map_{left}.geojson", out=str(out)))
    captured = capsys.readouterr()
    try:
        assert rc == 0, captured.err
        names = sorted(pyogrio.raw.read(str(out), columns=["name"])[3][0])
        assert len(names) == 2, captured.out       # the school east of 180° too, not only the west one
    finally:
        out.unlink(missing_ok=True)


# --- training.evaluate --predictions ------------------------------------------------------------
@pytest.fixture(scope="module")
def split(tmp_path_factory):
    """Four synthetic SocioSeg samples (test split) and their true masks as predictions."""
    from PIL import Image

    from backend.synth.sample import write_socioseg

    root = tmp_path_factory.mktemp("socioseg3")
    ids = write_socioseg(str(root / "data"), 4, "test", seed=5)
    perfect = root / "perfect"
    perfect.mkdir()
    for i in ids:
        Image.open(root / "data" / "test" / str(i) / "mask.png").save(perfect / f"{i}.png")
    return root, [str(i) for i in ids]


def _predictions(root, ids, name, keep=(), resize=None):
    from PIL import Image

    folder = root / name
    folder.mkdir(exist_ok=True)
    for k, i in enumerate(ids):
        if k in keep:
            img = Image.open(root / "perfect" / f"{i}.png")
            (img.resize(resize, Image.NEAREST) if resize else img).save(folder / f"{i}.png")
    return folder


EVAL_CASES = [
    ("empty-predictions-folder", lambda r, ids: _predictions(r, ids, "empty"),
     [r"nothing scored: --predictions .*empty holds no usable <id>\.png mask for the 4 samples of split 'test' "
      r"\(4 missing, e\.g\. \S+\.png\); no score is written"]),
    ("predictions-of-another-split", lambda r, ids: (_predictions(r, ids, "other"),
                                                     (r / "other" / "someone_else.png").write_bytes(
                                                         (r / "perfect" / f"{ids[0]}.png").read_bytes()))[0],
     [r"nothing scored", r"4 missing"]),
    ("all-predictions-the-wrong-size", lambda r, ids: _predictions(r, ids, "small", keep=range(4), resize=(64, 64)),
     [r"nothing scored", r"4 not the size of their sample: \S+\.png is 64 x 64 px, its sample \d+ x \d+"]),
]


@pytest.mark.parametrize("case", EVAL_CASES, ids=[c[0] for c in EVAL_CASES])
def test_evaluate_scores_nothing_when_nothing_is_there(case, split, capsys):
    from training.evaluate import main as evaluate

    root, ids = split
    _, make, wanted = case
    folder = make(root, ids)
    out = root / f"{case[0]}.json"
    rc = evaluate(["--data", str(root / "data"), "--split", "test", "--out", str(out), "--predictions", str(folder)])
    err = capsys.readouterr()
    assert rc == 2, err
    for pattern in wanted:
        assert re.search(pattern, err.err), (pattern, err.err)
    assert not out.exists() and "gIoU" not in err.out


def test_evaluate_names_missing_and_wrong_sized_predictions(split, capsys):
    """Two right, one missing, one of the wrong size: the missing one counts as an empty mask, the
    wrong-sized one is not stretched into a score; both are named."""
    from training.evaluate import main as evaluate

    root, ids = split
    folder = _predictions(root, ids, "mixed", keep=(0, 1))
    _predictions(root, ids[2:3], "mixed", keep=(0,), resize=(100, 80))
    out = root / "mixed.json"
    assert evaluate(["--data", str(root / "data"), "--split", "test", "--out", str(out),
                     "--predictions", str(folder)]) == 0
    err = capsys.readouterr().err
    assert f"1 of 4 samples have no prediction file in {folder} and count as empty masks: {ids[3]}.png" in err
    assert f"1 prediction(s) are not the size of their sample and were not scored (resize them to the sample's " \
           f"size): {ids[2]}.png is 100 x 80 px" in err
    result = json.loads(out.read_text())
    assert result["missing_predictions"] == [ids[3]] and len(result["wrong_size_predictions"]) == 1
    assert result["metrics"]["all"]["samples"] == 3


# --- download -------------------------------------------------------------------------------------
from test_download import COMMIT, REPO, cli as download_cli  # noqa: E402


class ListingHub:
    """A hub on 127.0.0.1 whose file list is `listing` {name: (size, bytes or None)}: a file listed
    with None is not served (404, as the hub answers for a file missing at a revision)."""

    def __init__(self):
        self.listing: dict[str, tuple[int, bytes | None]] = {}
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):  # noqa: N802
                self.serve(False)

            def do_GET(self):  # noqa: N802
                self.serve(True)

            def serve(self, body):
                path = self.path.split("?")[0]
                if path.startswith(f"/api/models/{REPO}"):
                    raw = json.dumps({"id": REPO, "sha": COMMIT, "siblings": [
                        {"rfilename": n, "size": size} for n, (size, _) in hub.listing.items()]}).encode()
                    return self.reply(200, raw, body, {"Content-Type": "application/json"})
                name = path.rsplit("/", 1)[-1]
                size, data = hub.listing.get(name, (0, None))
                if data is None:
                    return self.reply(404, b"Entry not found", body, {"X-Error-Code": "EntryNotFound",
                                                                       "X-Error-Message": "Entry not found"})
                self.reply(200, data, body, {"X-Repo-Commit": COMMIT, "ETag": '"e"'})

            def reply(self, code, raw, body, headers):
                self.send_response(code)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                if body:
                    self.wfile.write(raw)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def listing_hub():
    h = ListingHub()
    h.listing = {"config.json": (22, b'{"model_type": "tiny"}'), "model.safetensors": (5000, b"w" * 5000)}
    yield h
    h.server.shutdown()


def _download(hub, tmp_path, dest):
    p = download_cli("--dest", str(dest), endpoint=hub.url, home=tmp_path / "hf")
    out, err = p.communicate(timeout=60)
    return p.returncode, out, err


def test_download_into_a_folder_leaves_no_empty_partial(listing_hub, tmp_path):
    rc, out, err = _download(listing_hub, tmp_path, tmp_path / "m")
    assert rc == 0, (out, err)
    assert sorted(os.listdir(tmp_path / "m")) == [".socioseg-download.json", "config.json", "model.safetensors"]


DOWNLOAD_CASES = [
    ("dest-is-a-file", lambda t: (t / "a_file").write_text("x") and t / "a_file", {},
     r"^ERROR --dest .*a_file is a file, not a folder: give a folder to download into$"),
    ("dest-under-a-file", lambda t: (t / "a_file").write_text("x") and t / "a_file" / "m", {},
     r"^ERROR --dest .*a_file/m: .*a_file is a file, not a folder; choose another --dest$"),
    ("weights-file-404", lambda t: t / "m", {"model-00002.safetensors": (4000, None)},
     r"^ERROR model-00002\.safetensors is not on the hub for test-org/tiny-model at revision 0123456789ab "
     r"\(HTTP 404\).*--revision.*Download again will not help$"),
    ("weights-larger-than-the-disk", lambda t: t / "m", {"model-00002.safetensors": (10 ** 15, None)},
     r"^ERROR not enough disk space in .*/m: the download needs 1000000\.00 GB more and [\d.]+ [GM]B are free\. "
     r"Free [\d.]+ [GM]B or choose another folder \(--dest\)$"),
]


@pytest.mark.parametrize("case", DOWNLOAD_CASES, ids=[c[0] for c in DOWNLOAD_CASES])
def test_download_sweep(case, listing_hub, tmp_path):
    _, make_dest, extra, wanted = case
    dest = make_dest(tmp_path)
    listing_hub.listing.update(extra)
    before = snapshot(tmp_path)
    rc, out, err = _download(listing_hub, tmp_path, dest)
    assert rc == 2, (out, err)
    assert re.search(wanted, out.strip().splitlines()[-1]), out
    assert "Traceback" not in err and "press Download again" not in out
    after = {k: v for k, v in snapshot(tmp_path).items() if not k.startswith("hf/")}
    if case[0] == "weights-file-404":     # what was fetched before the missing file is kept, nothing empty left
        assert not (dest / ".partial").exists() or os.listdir(dest / ".partial")
    else:
        assert after == {k: v for k, v in before.items() if not k.startswith("hf/")}


def test_download_on_a_disk_that_fills_up_says_disk_full(listing_hub, tmp_path):
    """The file list under-states a file (8 MB served, 1 kB listed): the free-space check passes and
    the disk fills during the download. The message says so and how much to free, never 'Download
    again'."""
    from test_reliability import tmpfs

    listing_hub.listing["model-00002.safetensors"] = (1000, b"\1" * 8_000_000)
    with tmpfs(tmp_path / "small", "4m") as disk:
        rc, out, err = _download(listing_hub, tmp_path, disk / "m")
    assert rc == 2, (out, err)
    last = out.strip().splitlines()[-1]
    assert re.match(r"ERROR disk full while downloading model-00002\.safetensors into .*/m \([\d.]+ [MG]B free\): "
                    r"free [\d.]+ [MG]B or choose another folder \(--dest\)", last), last
    assert "Traceback" not in err


# --- leftovers of killed runs ---------------------------------------------------------------------
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

from helpers import ROOT  # noqa: E402

# Runs `python -m backend ARGS` and sends itself SIGNAL right after the old output was moved aside
# (the worst moment: the previous result is only in the backup folder, the new one not yet placed).
KILL_MID_COMMIT = """
import os, signal, sys
real = os.replace
def replace(src, dst):
    real(src, dst)
    if ".socioseg-old-" in dst:
        os.kill(os.getpid(), getattr(signal, sys.argv[1]))
os.replace = replace
from backend.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _hidden(folder):
    return sorted(n for n in os.listdir(folder) if n.startswith(".socioseg-"))


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGKILL"])
def test_a_run_killed_while_replacing_its_output_leaves_the_old_output(world, tmp_path, sig, capsys):
    out = tmp_path / "result.gpkg"
    assert main(detect_args(world, "--bbox", *SMALL_BBOX, out=str(out))) == 0
    old = out.read_bytes()
    argv = detect_args(world, "--bbox", *SMALL_BBOX, "--overwrite", "--query", "parks", out=str(out))
    r = subprocess.run([sys.executable, "-c", KILL_MID_COMMIT, sig, *argv], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    if sig == "SIGTERM":      # unwinds: the old output is put back at once, the staging folder removed
        assert r.returncode == 130 and "interrupted" in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert out.read_bytes() == old and _hidden(tmp_path) == []
        return
    assert r.returncode == -signal.SIGKILL
    assert not out.exists() and len(_hidden(tmp_path)) == 2        # the kill left both folders behind
    # The next run in that folder puts the previous output back and removes the leftovers first.
    rc = main(detect_args(world, "--bbox", *SMALL_BBOX, out=str(out)))
    assert rc == 2 and "result.gpkg exists; pass --overwrite" in capsys.readouterr().err
    assert out.read_bytes() == old and _hidden(tmp_path) == []


def test_leftovers_of_other_runs_are_left_alone_while_they_run(tmp_path):
    """A staging folder of a process that is still running (this one's parent, say) is not touched;
    one of an older version without a process id is removed once it is old."""
    from backend.output.atomic import LEGACY_STALE_S, sweep_leftovers

    live = tmp_path / f".socioseg-{os.getppid()}-abcd1234"
    legacy_new, legacy_old = tmp_path / ".socioseg-k2j3h4g5", tmp_path / ".socioseg-z9y8x7w6"
    for d in (live, legacy_new, legacy_old):
        d.mkdir()
        (d / "result.gpkg").write_bytes(b"x")
    past = time.time() - LEGACY_STALE_S - 5
    os.utime(legacy_old, (past, past))
    (tmp_path / ".socioseg-download.json").write_text("{}")       # a download's marker is no leftover
    sweep_leftovers(str(tmp_path))
    assert _hidden(tmp_path) == sorted([live.name, legacy_new.name, ".socioseg-download.json"])


# --- log lines and progress bars ---------------------------------------------------------------------
def test_warnings_of_training_evaluate_stay_off_its_progress_bar(split, tmp_path, capsys):
    """A corrupt sample is skipped with a WARNING while the bar is drawn: the line starts fresh."""
    from training.evaluate import main as evaluate

    root, ids = split
    data = tmp_path / "data"
    shutil.copytree(root / "data", data)
    (data / "test" / ids[1] / "sat.png").write_bytes(b"not a png")
    rc = evaluate(["--data", str(data), "--split", "test", "--out", str(tmp_path / "e.json"),
                   "--predictions", str(root / "perfect")])
    err = capsys.readouterr().err
    assert rc == 0, err
    k = err.index("WARNING: ")
    assert k == 0 or err[k - 1] in "\r\n", repr(err[max(0, k - 80):k + 40])


# --- unclear messages ----------------------------------------------------------------------------------
def _vector(path, geoms, props, crs="EPSG:32650"):
    import shapely

    names = sorted({k for p in props for k in p})
    fields = [np.array([p.get(k, "") for p in props], dtype=object) for k in names]
    kind = geoms[0].geom_type
    pyogrio.raw.write(str(path), np.array([shapely.to_wkb(g) for g in geoms], dtype=object), fields, names,
                      driver="GPKG", crs=crs, geometry_type=kind)


@pytest.fixture(scope="module")
def maps(world):
    import shapely

    _vector(world / "one_point.gpkg", [shapely.Point(500_100, 4_056_900)], [{"amenity": "school", "name": "A"}])
    _vector(world / "points_on_a_line.gpkg", [shapely.Point(499_500 + 300 * i, 4_056_900) for i in range(4)],
            [{"amenity": "school", "name": f"S{i}"} for i in range(4)])
    rng = np.random.default_rng(3)
    xy = rng.uniform([499_300, 4_056_300], [500_800, 4_057_300], (500, 2))
    tiny = [shapely.box(x, y, x + 6, y + 6) for x, y in xy]                    # 36 m2 each
    frame = [shapely.box(499_250, 4_056_250, 500_850, 4_057_350).exterior.buffer(1)]    # a road ring
    _vector(world / "tiny_schools.gpkg", tiny + frame,
            [{"amenity": "school", "name": f"kiosk {i}"} for i in range(500)] + [{"highway": "residential"}])
    return world


LONG_QUERY = "school " * 150_000           # a megabyte pasted into the query field

MESSAGE_CASES = [
    ("one-point-vector-map", lambda w: detect_args(w, map_="one_point.gpkg"), 2,
     [r"the map's features cover no area \(they span 0 x 0 metre: a single point", r"give a map"]),
    ("points-on-one-line", lambda w: detect_args(w, map_="points_on_a_line.gpkg"), 2,
     [r"the map's features cover no area \(they span 900 x 0 metre"]),
    ("a-megabyte-query", lambda w: detect_args(w, query=LONG_QUERY), 2,
     [r"--query is 1,049,999 characters long \('school school", r"at most 300 characters"]),
]


@pytest.mark.parametrize("case", MESSAGE_CASES, ids=[c[0] for c in MESSAGE_CASES])
def test_message_sweep(case, maps, capsys):
    _, argv, code, wanted = case
    before = snapshot(maps)
    rc = main(argv(maps))
    err = capsys.readouterr().err
    message = _last_line(err)
    assert rc == code, err[-3000:]
    assert "Traceback" not in err and "internal error" not in err and len(err) < 2000
    for pattern in wanted:
        assert re.search(pattern, message), (pattern, message)
    assert "rasters" not in message
    assert set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", message)) <= OPTIONS, message
    assert snapshot(maps) == before


def test_matches_all_under_the_minimum_area_are_named(maps, capsys):
    out = maps / "tiny.gpkg"
    rc = main(detect_args(maps, map_="tiny_schools.gpkg", out=str(out)))
    captured = capsys.readouterr()
    out.unlink(missing_ok=True)
    assert rc == 0 and "found 0 entities" in captured.out, captured.err
    assert re.search(r"WARNING: 500 map feature\(s\) match 'schools', but every one is smaller than the map "
                     r"reader's minimum place of 100 m2 \(the largest 36 m2\), so none is found", captured.err)


def test_a_megabyte_query_in_a_scene_request_is_one_short_error_line(scene_folder, tmp_path, capsys):  # noqa: F811
    from backend.worker import main as worker_main

    folder = tmp_path / "scene"
    shutil.copytree(scene_folder, folder)
    d = _request(folder)
    d["query"] = LONG_QUERY
    _write_request(folder, d)
    assert worker_main(str(folder)) == 2
    out = capsys.readouterr().out
    assert len(out) < 1000 and out.startswith("ERROR the query is 1,049,999 characters long"), out[:300]


def test_dump_on_a_full_disk_names_dump_not_out(world, tmp_path, capsys):
    from test_reliability import fill, tmpfs

    out = tmp_path / "out.gpkg"
    with tmpfs(tmp_path / "full", "256k") as disk:
        fill(disk)
        rc = main(detect_args(world, "--bbox", *SMALL_BBOX, "--dump", str(disk / "dump"), out=str(out),
                              map_="map.tif"))
        err = capsys.readouterr().err
        message = _last_line(err)
    assert rc == 2 and re.match(r"error: disk full: cannot write .*/full/dump/tile_0_0.* choose another --dump",
                                message), err
    assert "--out" not in message and not out.exists()


def test_the_time_estimate_counts_the_map(capsys):
    """Porto's OpenStreetMap extract (about 20,000 features) makes the estimate tens of seconds, not 1 s."""
    from backend.geo.tiles import estimate_seconds

    assert estimate_seconds(9, "mapreader", 20_000) == pytest.approx(9 * 0.6 + 4.0)
    assert estimate_seconds(9, "mapreader") == pytest.approx(9 * 0.6)
    assert estimate_seconds(9, "qwen", 20_000) is None
    porto = "/work/shared/realdata/porto"
    if not os.path.exists(porto):
        pytest.skip("the Porto scene is not here")
    out = "/tmp/reliab3_estimate.gpkg"
    rc = main(["detect", "--satellite", f"{porto}/satellite.tif", "--map", f"{porto}/map.gpkg", "--query", "schools",
               "--out", out, "--overwrite", "--bbox", "532000", "4555000", "533300", "4555600"])
    captured = capsys.readouterr()
    os.remove(out)
    assert rc == 0, captured.err
    m = re.search(r"estimated time: (\d+) s for 2 tile\(s\) and a map of ([\d,]+) features", captured.err)
    # How close the estimate comes to the real time is measured, not tested (timing varies with load):
    # idle here, 2.8 s estimated for 1.8 s taken.
    assert m and int(m.group(2).replace(",", "")) > 1000, captured.err
    assert int(m.group(1)) == round(estimate_seconds(2, "mapreader", int(m.group(2).replace(",", "")))), m.group(0)


def test_new_messages_name_the_plugin_controls_in_the_plugin(plugin_pkg):
    from backend.pipeline.stages import no_answers_message
    from socioseg.plugin.task import plugin_wording

    for notes in ({}, {"answer cut at the response budget of 64 tokens (--max-new-tokens)": 2}):
        text = plugin_wording(no_answers_message(2, notes, 64))
        assert "Settings > Response budget (tokens)" in text and "--" not in text, text
    text = plugin_wording("the model server at http://x/v1 did not answer within 600 s (--request-timeout): it is "
                          "overloaded or stalled; raise --request-timeout or lower --concurrency")
    assert "Requests in flight" in text and "--" not in text, text


@pytest.mark.parametrize("value", ["0", "-1", "nan"])
def test_server_check_refuses_a_timeout_that_is_no_time(fake, capsys, value):
    from backend.server_check import main as check

    fake.models = "ok"
    assert check([fake.url, "--timeout", value]) == 2
    assert capsys.readouterr().out.startswith(f"ERROR --timeout must be a number of seconds above 0, not {value}")

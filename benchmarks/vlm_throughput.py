"""Throughput of the vision-language path: the same N tiles through
  (a) the released per-tile sequential procedure (in process, batch of one),
  (b) batched in process (stage 1 for a batch in one `generate`, segmenter per tile, stage 2 batched),
  (c) a real model server (`transformers serve` on 127.0.0.1) with requests in flight concurrently,
printing seconds per tile, generated tokens per second, peak memory and the ratios to (a).

    .venv/bin/python benchmarks/vlm_throughput.py                 # CPU: the self-test's tiny Qwen2.5-VL
    .venv/bin/python benchmarks/vlm_throughput.py --size 3b --device cuda --tiles 32 --batch 16

`--size 3b` builds Qwen2.5-VL-3B-Instruct's published configuration with random weights (no download;
the self-test's tokenizer stands in). `--smoke` runs the real shape anywhere (one tile, 4 tokens, a
112 px image budget, SAM 2 hiera-large at real shape as the segmenter): on a CPU that is minutes.

    .venv/bin/python benchmarks/vlm_throughput.py --size 3b --smoke --json out/vlm_3b_smoke.json

Every answer is forced to exactly --tokens new tokens so that timings compare like with like; the
answers themselves are meaningless (random weights rarely give a parseable stage-1 answer, so stage 2
and the segmenter mostly do not run inside (a)-(c); the segmenter is also timed on its own). The segmenter is GrabCut unless --segmenter says otherwise.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def build_model(size: str, folder: str, dtype=None, layers: int | None = None, max_pixels: int | None = None) -> str:
    """Save a Qwen2.5-VL of the requested shape (random weights, the self-test's tokenizer); returns
    the folder. The 3B shape is Qwen2.5-VL-3B-Instruct's published configuration."""
    from backend.selftest.real_shape import save_qwen

    return save_qwen(folder, size, dtype=dtype, layers=layers, max_pixels=max_pixels)


def views(n: int, reasoner):
    from backend.pipeline.stages import make_view
    from backend.selftest.run import sample_scene

    scene = sample_scene()
    t = scene.tiles[0]
    sat, map_rgb, _ = scene.read(t)
    return [make_view(map_rgb, sat, "school", reasoner, tile_id=f"t{i}") for i in range(n)]


def peak_mb(device: str, pid: int | None = None) -> float:
    if device.startswith("cuda"):
        import torch
        return torch.cuda.max_memory_allocated() / 2**20
    if pid:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(label, fn, reasoner, n_tiles, device, pid=None):
    before = reasoner.tokens_generated
    start = time.perf_counter()
    fn()
    s = time.perf_counter() - start
    tokens = reasoner.tokens_generated - before
    return {"mode": label, "s_per_tile": s / n_tiles, "tok_per_s": tokens / s, "tokens": tokens,
            "peak_mb": peak_mb(device, pid)}


# `transformers serve` run by its own entry point, after the CPU bf16 helper when the weights are bf16
SERVE = ("import sys; sys.path.insert(0, {root!r}); "
         "from backend.selftest.real_shape import fp32_matmuls_on_cpu; fp32_matmuls_on_cpu(); "
         "from transformers.cli.transformers import main; sys.argv[0] = 'transformers'; sys.exit(main())")


def serve(folder: str, device: str, upcast: bool = False, server: str = "transformers"):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    where = ["--host", "127.0.0.1", "--port", str(port)]
    if server == "vllm":
        cmd = [os.path.join(os.path.dirname(sys.executable), "vllm"), "serve", folder, *where,
               "--max-model-len", "8192", "--limit-mm-per-prompt", '{"image": 2}']
    else:
        exe = [sys.executable, "-c", SERVE.format(root=ROOT)] if upcast else \
            [os.path.join(os.path.dirname(sys.executable), "transformers")]
        cmd = [*exe, "serve", folder, *where, "--device", device]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(600):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return proc, f"http://127.0.0.1:{port}/v1"
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("transformers serve did not start")


SMOKE = {"tiles": 1, "batch": 1, "concurrency": 1, "tokens": 4, "max_pixels": 112 * 112}


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=["tiny", "3b"], default="tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tiles", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4, help="tiles per batched generate (b)")
    ap.add_argument("--concurrency", type=int, default=4, help="requests in flight (c)")
    ap.add_argument("--tokens", type=int, default=64, help="new tokens forced per answer")
    ap.add_argument("--max-pixels", type=int, default=None, help="image budget per image (default: the "
                    "released 768*768)")
    ap.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                    help="weights; auto: bfloat16 on CUDA and for the 3B shape on CPU (float32 3B needs 15 GB)")
    ap.add_argument("--layers", type=int, default=None, help="3B only: text layers (real widths); default all 36")
    ap.add_argument("--segmenter", default="grabcut", help="segmenter spec, or 'sam2-large' / 'sam3-shape': "
                    "SAM 2 hiera-large / SAM 3 tracker at real shape with random weights")
    ap.add_argument("--smoke", action="store_true", help="real shape on any machine: one tile, 4 tokens, "
                    "a 112 px image budget, one request in flight, SAM 2 large as segmenter")
    ap.add_argument("--skip-server", action="store_true")
    ap.add_argument("--server", choices=["transformers", "vllm"], default="transformers",
                    help="(c)'s model server: `transformers serve` or `vllm serve` (CUDA, pip install vllm)")
    ap.add_argument("--json", help="also write the results as JSON here")
    args = ap.parse_args(argv)
    if args.smoke:
        for k, v in SMOKE.items():
            setattr(args, k, v)
        if args.segmenter == "grabcut":
            args.segmenter = "sam2-large"

    import torch

    from backend.pipeline.prompts import MAX_PIXELS, MIN_PIXELS
    from backend.reasoners.qwen import GenerationSettings

    cuda = args.device.startswith("cuda")
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}.get(args.dtype) or (
        torch.bfloat16 if cuda or args.size == "3b" else torch.float32)
    max_pixels = args.max_pixels or MAX_PIXELS
    min_pixels = min(MIN_PIXELS, max_pixels)
    gen = GenerationSettings(max_new_tokens=args.tokens, min_new_tokens=args.tokens, do_sample=False)
    work = tempfile.mkdtemp(prefix="socioseg-bench-")
    try:
        return run(args, work, dtype, gen, min_pixels, max_pixels)
    finally:
        shutil.rmtree(work, ignore_errors=True)     # a 3B model is 7.5 GB on disk


def run(args, work, dtype, gen, min_pixels, max_pixels) -> int:
    import torch

    from backend.pipeline.stages import run_batch, run_tile
    from backend.reasoners.openai_server import OpenAIReasoner, ServerSettings
    from backend.reasoners.qwen import QwenReasoner

    from backend.selftest.real_shape import fp32_matmuls_on_cpu

    cuda = args.device.startswith("cuda")
    upcast = dtype == torch.bfloat16 and not cuda
    if upcast:      # this CPU has no bf16 units: bf16 GEMMs would run ~9x slower than float32
        fp32_matmuls_on_cpu()
    t0 = time.perf_counter()
    folder = build_model(args.size, os.path.join(work, "vlm"), dtype, args.layers, args.max_pixels)
    build_s = time.perf_counter() - t0
    segmenter = make_segmenter(args.segmenter, args.device, work)
    device_name = torch.cuda.get_device_name() if cuda else f"CPU ({os.cpu_count()} cores)"
    shape = args.size + (f" with {args.layers} of 36 text layers" if args.layers else "")
    print(f"# VLM throughput: {shape} Qwen2.5-VL (random weights, {str(dtype).split('.')[-1]}), {args.tiles} "
          f"tile(s), image budget {max_pixels} px, {args.tokens} tokens per answer, segmenter "
          f"{segmenter.name}, device {device_name}, torch {torch.__version__}; model built and saved in "
          f"{build_s:.0f} s", flush=True)
    t0 = time.perf_counter()
    local = QwenReasoner(folder, device=args.device, generation=gen, min_pixels=min_pixels,
                         max_pixels=max_pixels, dtype=dtype)
    load_s = time.perf_counter() - t0
    tiles = views(args.tiles, local)
    rows = [timed("(a) per tile, sequential", lambda: [run_tile(v, local, segmenter) for v in tiles],
                  local, args.tiles, args.device)]
    print(rows[-1], flush=True)
    rows.append(timed(f"(b) batched in process, batch {args.batch}",
                      lambda: [run_batch(tiles[i:i + args.batch], local, segmenter)
                               for i in range(0, len(tiles), args.batch)], local, args.tiles, args.device))
    print(rows[-1], flush=True)
    del local
    # The segmenter on its own (random weights stop most answers at stage 1, before it is asked)
    from backend.segmenters.base import Prompt
    h, w = tiles[0].sat_image.shape[:2]
    t0 = time.perf_counter()
    segmenter.set_image(tiles[0].sat_image)
    embed_s = time.perf_counter() - t0
    segmenter.segment([Prompt((w * 0.2, h * 0.2, w * 0.7, h * 0.8), [(w * 0.4, h * 0.5)])])
    segment = {"name": segmenter.name.split(":")[0], "embedding_s": round(embed_s, 2),
               "one_prompt_s": round(time.perf_counter() - t0 - embed_s, 2)}
    print(f"segmenter {segmenter.name}: embedding {segment['embedding_s']} s, one box+point "
          f"{segment['one_prompt_s']} s", flush=True)
    if not args.skip_server:
        proc, url = serve(folder, args.device, upcast, args.server)
        try:
            remote = OpenAIReasoner(ServerSettings(url, concurrency=args.concurrency), gen)
            remote.min_pixels, remote.max_pixels = min_pixels, max_pixels
            rows.append(timed(f"(c) {args.server} serve, {args.concurrency} in flight",
                              lambda: run_batch(tiles, remote, segmenter), remote, args.tiles,
                              args.device, pid=proc.pid))
            print(rows[-1], flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    base = rows[0]["s_per_tile"]
    print("| mode | s/tile | tokens generated | tokens/s | peak MB | speed-up vs (a) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['s_per_tile']:.3f} | {r['tokens']} | {r['tok_per_s']:.1f} | {r['peak_mb']:.0f} | "
              f"{base / r['s_per_tile']:.2f}x |")
    print("peak MB: this process for (a) and (b) (CUDA: max allocated), the server process for (c)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"size": args.size, "layers": args.layers or (36 if args.size == "3b" else None),
                       "dtype": str(dtype).split(".")[-1], "device": device_name, "tiles": args.tiles,
                       "tokens": args.tokens, "max_pixels": max_pixels, "segmenter": segmenter.name,
                       "build_s": round(build_s, 1), "load_s": round(load_s, 1), "rows": rows, "segmenter_alone": segment,
                       "peak_rss_mb": round(rss_mb())}, f, indent=1)
    return 0


def make_segmenter(spec: str, device: str, work: str):
    """A segmenter spec, or a real-shape SAM with random weights saved under `work`."""
    from backend.engines import build_segmenter

    if spec in ("sam2-large", "sam3-shape"):
        import torch

        from backend.selftest import real_shape

        torch.manual_seed(0)
        path = os.path.join(work, spec)
        if spec == "sam2-large":
            from transformers import Sam2ImageProcessor, Sam2Model, Sam2Processor
            Sam2Model(real_shape.sam2_large_config()).save_pretrained(path)
            Sam2Processor(image_processor=Sam2ImageProcessor()).save_pretrained(path)
            spec = f"sam2:{path}"
        else:
            real_shape.save_sam3(path)
            spec = f"sam3:{path}"
    return build_segmenter(spec, device)


if __name__ == "__main__":
    sys.exit(main())

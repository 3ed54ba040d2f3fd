"""Throughput of the vision-language path: the same N tiles through
  (a) the released per-tile sequential procedure (in process, batch of one),
  (b) batched in process (stage 1 for a batch in one `generate`, segmenter per tile, stage 2 batched),
  (c) a real model server (`transformers serve` on 127.0.0.1) with requests in flight concurrently,
printing seconds per tile, generated tokens per second, peak memory and the ratios to (a).

    .venv/bin/python benchmarks/vlm_throughput.py                 # CPU: the self-test's tiny Qwen2.5-VL
    .venv/bin/python benchmarks/vlm_throughput.py --size 3b --device cuda --tiles 32 --batch 16

`--size 3b` builds a Qwen2.5-VL-3B-shaped model from its config with random weights (no download).
Every answer is forced to exactly --tokens new tokens so that timings compare like with like; the
answers themselves are meaningless. The segmenter is GrabCut (weights would not change the ratios).
"""
from __future__ import annotations

import argparse
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def build_model(size: str, folder: str) -> str:
    """Save a Qwen2.5-VL of the requested shape with the self-test's tokenizer; returns the folder."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from backend.selftest.tiny import build_tiny_vlm

    model, processor = build_tiny_vlm(0, [])
    if size == "3b":
        cfg = Qwen2_5_VLConfig.from_dict({**model.config.to_dict(), **{
            "hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36, "num_attention_heads": 16,
            "num_key_value_heads": 2}})
        cfg.text_config.update({"hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36,
                                "num_attention_heads": 16, "num_key_value_heads": 2})
        cfg.vision_config.update({"depth": 32, "hidden_size": 1280, "intermediate_size": 3420,
                                  "num_heads": 16, "out_hidden_size": 2048})
        model = Qwen2_5_VLForConditionalGeneration(cfg)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


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


def serve(folder: str, device: str):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    exe = os.path.join(os.path.dirname(sys.executable), "transformers")
    proc = subprocess.Popen([exe, "serve", folder, "--host", "127.0.0.1", "--port", str(port), "--device", device],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(600):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return proc, f"http://127.0.0.1:{port}/v1"
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("transformers serve did not start")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=["tiny", "3b"], default="tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tiles", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4, help="tiles per batched generate (b)")
    ap.add_argument("--concurrency", type=int, default=4, help="requests in flight (c)")
    ap.add_argument("--tokens", type=int, default=64, help="new tokens forced per answer")
    ap.add_argument("--skip-server", action="store_true")
    args = ap.parse_args()

    import torch

    from backend.engines import build_reasoner
    from backend.pipeline.stages import run_batch, run_tile
    from backend.reasoners.openai_server import OpenAIReasoner, ServerSettings
    from backend.reasoners.qwen import GenerationSettings
    from backend.segmenters.grabcut import GrabCutSegmenter

    gen = GenerationSettings(max_new_tokens=args.tokens, min_new_tokens=args.tokens, do_sample=False)
    folder = build_model(args.size, tempfile.mkdtemp(prefix="socioseg-bench-"))
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else \
        f"CPU ({os.cpu_count()} cores)"
    print(f"# VLM throughput: {args.size} Qwen2.5-VL (random weights), {args.tiles} tiles of 768 px, "
          f"{args.tokens} tokens per answer, device {device_name}, torch {torch.__version__}")
    local = build_reasoner(f"qwen:{folder}", args.device, gen)
    tiles = views(args.tiles, local)
    rows = [timed("(a) per tile, sequential", lambda: [run_tile(v, local, GrabCutSegmenter()) for v in tiles],
                  local, args.tiles, args.device)]
    rows.append(timed(f"(b) batched in process, batch {args.batch}",
                      lambda: [run_batch(tiles[i:i + args.batch], local, GrabCutSegmenter())
                               for i in range(0, len(tiles), args.batch)], local, args.tiles, args.device))
    del local
    if not args.skip_server:
        proc, url = serve(folder, args.device)
        try:
            remote = OpenAIReasoner(ServerSettings(url, concurrency=args.concurrency), gen)
            rows.append(timed(f"(c) server, {args.concurrency} in flight",
                              lambda: run_batch(tiles, remote, GrabCutSegmenter()), remote, args.tiles,
                              args.device, pid=proc.pid))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    base = rows[0]["s_per_tile"]
    print("| mode | s/tile | tokens generated | tokens/s | peak MB | speed-up vs (a) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['s_per_tile']:.3f} | {r['tokens']} | {r['tok_per_s']:.1f} | {r['peak_mb']:.0f} | "
              f"{base / r['s_per_tile']:.2f}x |")
    print("peak MB: this process for (a) and (b) (CUDA: max allocated), the server process for (c)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

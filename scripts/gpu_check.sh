#!/usr/bin/env bash
# Every GPU path at Qwen2.5-VL-3B-Instruct's real shape (random weights, no download), in one run:
#   1. environment: CUDA torch, GPU, flash attention / vLLM / DeepSpeed if installed
#   2. throughput: sequential vs batched in process vs a real model server with requests in flight
#      (`vllm serve` when vLLM is installed, else `transformers serve`), SAM 2 hiera-large's shape
#   3. one GRPO step (two stages), LoRA and full fine-tuning, with peak memory
# and writes OUT/gpu_check.json and OUT/gpu_check.md (the table the README's performance section quotes).
#
#   bash scripts/gpu_check.sh                   # one GPU: under 10 minutes on an H100/H200
#   bash scripts/gpu_check.sh --cpu-smoke       # the same steps with the smoke settings, on a CPU
#
# Options: --out DIR (default out/gpu_check), --layers N (text layers of the 3B at real widths for the
# GRPO steps; CPU smoke default 4, as the whole model does not train in 24 GB of RAM in bf16 on a CPU),
# --vlm-layers N (the same for the throughput step; default all 36), --skip-full (no full fine-tuning step).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=out/gpu_check
MODE=gpu
LAYERS=""
VLM_LAYERS=""
SKIP_FULL=0
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu-smoke) MODE=cpu ;;
    --out) OUT="$2"; shift ;;
    --layers) LAYERS="$2"; shift ;;
    --vlm-layers) VLM_LAYERS="$2"; shift ;;
    --skip-full) SKIP_FULL=1 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
if [ "$MODE" = cpu ] && [ -z "$LAYERS" ]; then LAYERS=4; fi
step() { echo "== $(date -u +%H:%M:%S) $*"; }

step "1/4 environment"
"$PY" - "$OUT/env.json" "$MODE" <<'EOF'
import importlib.util, json, platform, sys
import torch, transformers
info = {"mode": sys.argv[2], "python": platform.python_version(), "torch": torch.__version__,
        "transformers": transformers.__version__, "cuda_available": torch.cuda.is_available(),
        "cuda": torch.version.cuda, "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "bf16_supported": bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported()),
        **{f"{m}_installed": importlib.util.find_spec(m) is not None for m in ("flash_attn", "vllm", "deepspeed")}}
if sys.argv[2] == "gpu" and not info["cuda_available"]:
    sys.exit("error: no CUDA GPU visible to torch (a CPU build of torch, or no driver); use --cpu-smoke on a CPU")
json.dump(info, open(sys.argv[1], "w"), indent=1)
print(json.dumps(info))
EOF

step "2/4 throughput at 3B shape"
if [ "$MODE" = gpu ]; then
  SERVER=transformers
  "$PY" -c "import vllm" 2>/dev/null && SERVER=vllm
  "$PY" benchmarks/vlm_throughput.py --size 3b --device cuda --tiles 32 --batch 16 --concurrency 16 \
    --tokens 64 --segmenter sam2-large --server "$SERVER" ${VLM_LAYERS:+--layers "$VLM_LAYERS"} \
    --json "$OUT/throughput.json"
  DEV=(--device cuda --steps 2 --num-generations 8 --max-completion-length 256 --segmenter large)
else
  "$PY" benchmarks/vlm_throughput.py --size 3b --device cpu --smoke ${VLM_LAYERS:+--layers "$VLM_LAYERS"} \
    --json "$OUT/throughput.json"
  DEV=(--device cpu --smoke)
fi

step "3/4 GRPO step, LoRA"
"$PY" benchmarks/grpo_step.py "${DEV[@]}" ${LAYERS:+--layers "$LAYERS"} --json "$OUT/grpo_lora.json"
if [ "$SKIP_FULL" = 0 ]; then
  step "3/4 GRPO step, full fine-tuning"
  "$PY" benchmarks/grpo_step.py "${DEV[@]}" --full ${LAYERS:+--layers "$LAYERS"} --json "$OUT/grpo_full.json"
fi

step "4/4 summary"
"$PY" - "$OUT" <<'EOF'
import json, os, sys
out = sys.argv[1]
load = lambda n: json.load(open(os.path.join(out, n))) if os.path.exists(os.path.join(out, n)) else None
env, tp, lora, full = load("env.json"), load("throughput.json"), load("grpo_lora.json"), load("grpo_full.json")
summary = {"env": env, "throughput": tp, "grpo_lora": lora, "grpo_full": full}
json.dump(summary, open(os.path.join(out, "gpu_check.json"), "w"), indent=1)
where = ", ".join(env["gpus"]) or "CPU"
lines = [f"Run on {where} ({env['mode']} mode), torch {env['torch']}, transformers {env['transformers']}; "
         f"flash-attn {'yes' if env['flash_attn_installed'] else 'no'}, vLLM {'yes' if env['vllm_installed'] else 'no'}.",
         "", f"Throughput: Qwen2.5-VL-3B shape ({tp['layers']} text layers, {tp['dtype']}), {tp['tiles']} tile(s), "
         f"{tp['tokens']} tokens per answer, image budget {tp['max_pixels']} px, segmenter {tp['segmenter']}.", "",
         "| mode | s/tile | tokens/s | peak MB | speed-up vs (a) |", "|---|---|---|---|---|"]
base = tp["rows"][0]["s_per_tile"]
for r in tp["rows"]:
    lines.append(f"| {r['mode']} | {r['s_per_tile']:.2f} | {r['tok_per_s']:.1f} | {r['peak_mb']:.0f} | {base / r['s_per_tile']:.2f}x |")
seg = tp.get("segmenter_alone")
if seg:
    lines += ["", f"Segmenter alone ({seg['name']}, real shape): image embedding {seg['embedding_s']} s, "
                  f"one box + point {seg['one_prompt_s']} s."]
lines += ["", "| GRPO step | text layers | dtype | generations x tokens | s/step | peak GPU GiB | peak RSS GiB |",
          "|---|---|---|---|---|---|---|"]
for r in (lora, full):
    if r:
        lines.append(f"| {r['mode']} | {r['text_layers']} | {r['dtype']} | {r['num_generations']} x "
                     f"{r['max_completion_length']} | {', '.join(map(str, r['seconds_per_step']))} | "
                     f"{r['peak_gpu_memory_gib']} | {r['peak_rss_gib']} |")
open(os.path.join(out, "gpu_check.md"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
echo "wrote $OUT/gpu_check.json and $OUT/gpu_check.md"

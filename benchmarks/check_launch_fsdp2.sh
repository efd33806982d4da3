#!/usr/bin/env bash
# The launch script's FSDP2 path end to end on GPUS GPUs (default 2; 1 is a world of one), on a tiny random world:
# stage 2 (local_finetune.sh) with SHARDING=fsdp2 and the recipe's flags (global batch 128, micro-batch 8,
# checkpointing, bf16, tf32, 4 data-loader workers), then the saved checkpoint loaded through the builder and asked
# for a caption.
#   [GPUS=2] bash benchmarks/check_launch_fsdp2.sh OUT_DIR
set -euo pipefail
OUT_DIR=$(realpath -m "${1:?usage: check_launch_fsdp2.sh OUT_DIR}")
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cd "$(dirname "$0")/.."
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 HF_HUB_OFFLINE=1
mkdir -p "$OUT_DIR" "$WORK/data/sharegpt4v"
python3 benchmarks/train_multigpu_7b.py make-world "$WORK/world" --tiny --rows 512
cp "$WORK/world/data.json" "$WORK/data/sharegpt4v/sharegpt4v_mix665k_cap23k_coco-ap9k_lcs3k_sam9k_div2k.json"
ln -s "$WORK/world/images" "$WORK/data/images"
status=0
SHARDING=fsdp2 NUM_GPUS=${GPUS:-2} DATA_ROOT="$WORK/data" STAGE1="$WORK/world" SAVE_PATH="$WORK/out" \
    bash scripts/sharegpt4v/local_finetune.sh > "$OUT_DIR/train.log" 2>&1 || status=$?
grep -E "global batch|'loss'|rror|compiled" "$OUT_DIR/train.log" | cut -c1-300 | head -20 || true
[ "$status" -eq 0 ] || { echo "training failed (exit $status)"; tail -n 20 "$OUT_DIR/train.log"; exit 1; }
python3 - "$WORK" "$OUT_DIR" <<'PY'
import json, sys
from pathlib import Path
from share4v.inference import Chat, GenerationParams, Share4VEngine
from share4v.model.builder import load_pretrained_model
import math
import re
import torch
work, out = Path(sys.argv[1]), Path(sys.argv[2])
losses = [float(m) for m in re.findall(r"'loss': '([^']+)'", (out / "train.log").read_text())]
args = torch.load(work / "out" / "training_args.bin", weights_only=False)
assert args.fsdp is True and not args.deepspeed, (args.fsdp, args.deepspeed)  # FSDP2 ran, DeepSpeed did not
assert len(losses) == 4 and all(math.isfinite(x) for x in losses), losses  # 512 rows / global batch 128
assert (work / "out" / "model.safetensors").is_file()
tokenizer, model, processor, context = load_pretrained_model(str(work / "out"), None, "share4v-tiny")
answer = Share4VEngine(tokenizer, model, processor, context).complete(
    [Chat.single("What is shown?", [str(work / "world/images/0.jpg")])], GenerationParams(temperature=0, max_new_tokens=8)
)[0]
result = {"files": sorted(p.name for p in (work / "out").iterdir()), "losses": losses, "fsdp": args.fsdp,
          "answer": answer.text, "finish_reason": answer.finish_reason}
(out / "check.json").write_text(json.dumps(result, indent=1))
print(json.dumps(result))
PY

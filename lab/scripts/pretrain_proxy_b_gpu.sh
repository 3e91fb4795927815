#!/usr/bin/env bash
# Pre-train dbprompt-proxy-b (issue 28) on one CUDA GPU with no network, in one command of under 10 minutes;
# the fp16 weights and their record come back in $OUT, split in 15 MB parts (a file may be 16 MiB at most).
#
# Here, once (with network), from the repository root:
#     lab/scripts/pretrain_proxy_b_gpu.sh --fetch-wheels
#   saves into .whl/ the three pure-Python wheels the GPU image lacks (open_clip_torch, ftfy, wcwidth; it has
#   torch, timm, transformers, safetensors, huggingface_hub, regex, pillow, numpy, tqdm, pyarrow).
# There, from the repository root, with .whl carried:
#     lab/scripts/pretrain_proxy_b_gpu.sh [PRETRAIN OPTIONS]
#   writes the broad world (64,000 source images + 1,000 test, 96 px) into runs/proxy-b, pre-trains with bf16
#   autocast (recipe: dbprompt_lab.proxy.PROXIES["dbprompt-proxy-b"]), checkpointing every 100 steps, and stops
#   cleanly after LIMIT seconds (default 540). Cut off, it says so: run it again on the same (warm) machine and
#   it resumes from the last checkpoint; a fresh machine starts again from scratch. Options are passed on to
#   `dbprompt-lab proxy pretrain`: e.g. --loss contrastive, or a second stage on shape twins from the first's
#   weights, `WORK=runs/proxy-b-twins lab/scripts/pretrain_proxy_b_gpu.sh --init runs/proxy-b/dbprompt-proxy-b.safetensors
#   --twins` (lab/README.md, "Shape twins").
# Back here, reassemble and ship (the record says the source test T2I R@1; ship only if it is >= 85):
#     cat OUT/dbprompt-proxy-b.safetensors.part* > lab/src/dbprompt_lab/models/dbprompt-proxy-b.safetensors
#     (cd lab/src/dbprompt_lab/models && sha256sum -c OUT/dbprompt-proxy-b.sha256)  # the GPU's file, byte for byte
#     cp OUT/dbprompt-proxy-b.record.json lab/src/dbprompt_lab/models/
#     dbprompt-lab proxy check --model dbprompt-proxy-b              # re-measures the recorded R@1 here
set -euo pipefail

WORK=${WORK:-runs/proxy-b}
OUT=${OUT:-$WORK/out}
LIMIT=${LIMIT:-540}
WHEELS=(open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.5)

if [ "${1:-}" = "--fetch-wheels" ]; then
    python3 -m pip download --no-deps --only-binary=:all: -d .whl "${WHEELS[@]}"
    exit 0
fi

if ! python3 -c "import open_clip" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
# From the source tree: the lab registers its model directory itself (no entry point is installed there).
export PYTHONPATH=$PWD/src:$PWD/lab/src:${PYTHONPATH:-} PYTHONUNBUFFERED=1
mkdir -p "$WORK" "$OUT"
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU'; print(torch.cuda.get_device_name(0))"

status=0
# SIGINT after LIMIT seconds: the command stops as on Ctrl-C, and the checkpoints written so far stay.
timeout --signal=INT "$LIMIT" python3 -m dbprompt_lab proxy pretrain --model dbprompt-proxy-b --world broad \
    --work-dir "$WORK" --device cuda --bf16 --workers "$(( $(nproc) > 12 ? 12 : $(nproc) ))" \
    --image-cache-mb 16000 --resume --no-progress "$@" 2>&1 | tee -a "$OUT/pretrain.log" || status=$?
if [ ! -f "$WORK/dbprompt-proxy-b.record.json" ] || [ "$status" -ne 0 ]; then
    echo "cut off or failed (status $status): run this script again on the same machine to resume from $WORK" | tee -a "$OUT/pretrain.log"
    exit 1
fi
split -b 15M -d "$WORK/dbprompt-proxy-b.safetensors" "$OUT/dbprompt-proxy-b.safetensors.part"
(cd "$WORK" && sha256sum dbprompt-proxy-b.safetensors) > "$OUT/dbprompt-proxy-b.sha256"
cp "$WORK/dbprompt-proxy-b.record.json" "$OUT/"
ls -l "$OUT"

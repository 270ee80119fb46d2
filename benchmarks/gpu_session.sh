#!/usr/bin/env bash
# The one prepared script for a session with a lent GPU (at most 10 minutes, no network): the GPU tests,
# pretrain on the GPU (its device line, --tf32, and running out of memory as one line), then the GPU
# benchmark. Everything it learns goes under $OUT; each stage has its own time limit and its exit status
# is written to $OUT/status.txt, so one failing stage does not hide the others. The stages' limits add
# up to 600 s; a typical run takes less. The benchmark's table is at the end of $OUT/gpu-bench.txt.
#
#     OUT=/tmp/out PYTHONPATH=. bash benchmarks/gpu_session.sh
#
# Needs CuPy 14 for the machine's CUDA (pip install -e ".[gpu-cuda13]"), PyTorch and transformers (the
# benchmark's peers; llms_from_scratch too for the book's model, else that row is skipped).
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="${PYTHONPATH:-.}" OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-4}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1  # no network: the peers are built from configs, never downloaded
OUT="${OUT:-runs/gpu-session}"
PYTHON="${PYTHON:-python3}"
mkdir -p "$OUT"
: > "$OUT/status.txt"

stage() {  # stage NAME SECONDS COMMAND...: run it with a time limit, output to $OUT/NAME.txt
    local name=$1 seconds=$2
    shift 2
    local start=$SECONDS
    timeout -k 10 "$seconds" "$@" > "$OUT/$name.txt" 2>&1
    local rc=$?
    echo "$name: exit $rc in $((SECONDS - start)) s" | tee -a "$OUT/status.txt"
    return 0
}

stage environment 30 bash -c "nvidia-smi; $PYTHON -c 'import sys, numpy, cupy; print(sys.version); \
print(\"numpy\", numpy.__version__, \"cupy\", cupy.__version__); cupy.show_config()'; \
$PYTHON -c 'import torch, transformers; print(\"torch\", torch.__version__, \"transformers\", transformers.__version__)'"

stage pytest-gpu 150 "$PYTHON" -m pytest -q -m gpu -p no:cacheprovider -rs --junitxml="$OUT/pytest-gpu.xml"

# pretrain on the GPU: the device line, TF32 and the peak memory at the end (expect exit 0) ...
stage pretrain-tf32 75 "$PYTHON" examples/pretrain.py --device cuda --tf32 --config cpu-tiny \
    --context-length 64 --vocab-size 300 --batch-size 8 --max-steps 20 --eval-every 10 --eval-batches 2 \
    --out "$OUT/pretrain-tf32"
# ... mixed precision: float16 matmuls, the loss scale, the summary line (expect exit 0) ...
stage pretrain-fp16 45 "$PYTHON" examples/pretrain.py --device cuda --dtype float16 --config cpu-tiny \
    --context-length 64 --vocab-size 300 --batch-size 8 --max-steps 20 --eval-every 10 --eval-batches 2 \
    --out "$OUT/pretrain-fp16"
# ... and a run far too big for the GPU: one `error: out of memory ...` line (expect exit 2)
stage pretrain-oom 60 "$PYTHON" examples/pretrain.py --device cuda --config gpt2-medium --context-length 1024 \
    --vocab-size 300 --batch-size 128 --max-steps 1 --out "$OUT/pretrain-oom"

stage gpu-bench 240 "$PYTHON" -m benchmarks.gpu --device cuda --config gpt2-small --timeout 90 \
    --save "$OUT/gpu-bench.json"
cat "$OUT/status.txt"

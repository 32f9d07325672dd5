#!/usr/bin/env bash
# One GPU table for DPSeg and SED (benchmarks/gpu_bench.py): bf16 and fp32 latency and peak memory of sed-b, sed-b
# with early rejection, dpseg-b pass 1 / with early rejection (SED's ranking, the cost-volume ranking) / two passes /
# pass 2 over the present classes at K = 150 and 847 (768²),
# and one dpseg-b training step at batch 4, 768². About 5-8 minutes on one H100 / H200.
#
#   bash benchmarks/gpu.sh                      # from the repository root, on the GPU machine
#   bash benchmarks/gpu.sh --precisions bf16    # any gpu_bench.py option passes through
#
# Needs torch, timm and the rest of dpseg's model dependencies. The only one a plain CUDA PyTorch image usually
# lacks is open_clip_torch (with ftfy and wcwidth); without network access, bring their wheels in a folder
# (DPSEG_WHEELS, default .whl/) and they are installed into /tmp/dpseg-site, nothing else:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
#       -d .whl open_clip_torch ftfy wcwidth
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import open_clip" 2>/dev/null; then
    wheels=${DPSEG_WHEELS:-.whl}
    if [ ! -d "$wheels" ]; then
        echo "open_clip is not installed and there is no wheel folder $wheels (see the header of $0)" >&2
        exit 2
    fi
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/dpseg-site "$wheels"/*.whl
    export PYTHONPATH=/tmp/dpseg-site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
exec "$PY" benchmarks/gpu_bench.py "$@"

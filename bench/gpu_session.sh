#!/usr/bin/env bash
# What one lent GPU session measures, each part under its own time limit so a failure costs only
# that part: the training step and folder prediction against bare loops, then as much of the
# GPU accuracy benchmark as fits. Logs and JSON go to $OUT (the device tool brings them back).
#
#   bash bench/gpu_session.sh                         # on the lent machine, with .whl carried
#   DEVICE=cpu QUICK=1 OUT=/tmp/out bash bench/gpu_session.sh   # a dry run here, tiny settings
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT to the folder results go to}
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then  # what the device image lacks (segmentation-models-pytorch, ...)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site:$PWD || exit 1
else
    export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE
PY=${PY:-python3}
if [ -n "${QUICK:-}" ]; then
    TRAIN=(--batch 4 --steps 3 --rounds 1 --crop 64 --backbones custom)
    PREDICT=(--batch 2 --photos 4 --rounds 1)
    ACCURACY=(--epochs 1 --budget-s 60 --run "custom, default:--backbone custom --batch-size 4")
    LIMITS=(300 300 600)
else
    TRAIN=(--batch 32 --steps 40 --rounds 3 --backbones "${BACKBONES:-custom,resnet18,vgg11,mobilenet_v3_large}")
    PREDICT=(--batch 32 --photos 192 --rounds 3)
    ACCURACY=(--mode gpu --budget-s "${ACCURACY_BUDGET:-200}")
    LIMITS=(100 90 260)
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv 2>&1; nproc; date -u; } > "$OUT/machine.txt"
"$PY" -c "import torch, sys; print(sys.version, torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name(0))" >> "$OUT/machine.txt" 2>&1
cd bench
timeout "${LIMITS[0]}" "$PY" bench_train.py --device "$DEVICE" "${TRAIN[@]}" > "$OUT/train.log" 2>&1; echo "train exit $?" >> "$OUT/status.txt"
timeout "${LIMITS[1]}" "$PY" bench_predict.py --part folder --device "$DEVICE" "${PREDICT[@]}" > "$OUT/predict.log" 2>&1; echo "predict exit $?" >> "$OUT/status.txt"
timeout "${LIMITS[2]}" "$PY" bench_accuracy.py "${ACCURACY[@]}" --work /tmp/lunar-accuracy --out "$OUT" > "$OUT/accuracy.log" 2>&1; echo "accuracy exit $?" >> "$OUT/status.txt"
cat "$OUT/status.txt"
tail -n 12 "$OUT/train.log" "$OUT/predict.log" "$OUT/accuracy.log"

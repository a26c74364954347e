#!/usr/bin/env bash
# The GPU check of the grouped matmul: one command, about 5 minutes on one H100.
#
#   bash scripts/gpu_wheels.sh                  # once, where PyPI is reachable: .whl/
#   OUT=/tmp/gpu bash scripts/gpu_check.sh      # on the GPU machine, with .whl/ beside it
#   PRESET=tiny OUT=/tmp/gpu bash scripts/gpu_check.sh   # dry run on CPU, about 3 minutes
#
# Sections, each in its own process under its own time limit, each writing
# under $OUT as it goes (a section that hangs or runs out of memory costs
# only itself): env (devices, kernels available), kernels (every grouped
# matmul available on this backend against a float64 reference, through
# its VJP), raw (the grouped matmul alone vs a dense matmul of the same
# rows; Mosaic GPU tile sweep), layer (MoeLayer vs a dense FFN of equal
# active FLOPs, every mode and kernel, E = 8, 64, 256). The last lines are
# the tables and the targets, met or not. One GPU process at a time: more
# once hung a machine (../shared/GPU.md).
# SECTIONS picks (default "env kernels raw layer"); "train" adds the whole
# train step (scripts/bench_train.py: Switch-Base-8 and its dense twin in
# bfloat16, MFU, remat settings), about 4 minutes more.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-${TMPDIR:-/tmp}/moejax_gpu_check}
PRESET=${PRESET:-h100}
PY=${PYTHON:-python3}
SECTIONS=${SECTIONS:-env kernels raw layer}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  SITE=${TMPDIR:-/tmp}/moejax_site
  $PY -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" .whl/*.whl \
    > "$OUT/wheels.log" 2>&1 || { echo "installing .whl/ failed: see $OUT/wheels.log"; exit 1; }
  export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
# tests/conftest.py defaults JAX_PLATFORMS to cpu; the kernels section must see the GPU.
if command -v nvidia-smi >/dev/null 2>&1; then PLATFORM=cuda; else PLATFORM=cpu; fi

sec() {  # name, time limit (s), command...
  local name=$1 limit=$2 start=$SECONDS rc; shift 2
  case " $SECTIONS " in *" $name "*) ;; *) return 0 ;; esac
  timeout -k 10 "$limit" "$@" > "$OUT/$name.log" 2>&1; rc=$?
  echo "== $name rc=$rc $((SECONDS - start))s (limit ${limit}s)" | tee -a "$OUT/sections.txt"
  grep -v "^WARNING\|^I0000\|^E0000\|it/s\]\|config/s\]" "$OUT/$name.log" | tail -n 4 | cut -c1-200
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null
  echo "preset=$PRESET platform=$PLATFORM"; } > "$OUT/env.txt"
sec env 60 env JAX_PLATFORMS=$PLATFORM $PY -c "
import jax, flax
from moejax.dispatch import available_grouped_matmuls, default_grouped_matmul, resolve_mode
d = jax.devices()[0]
print('jax', jax.__version__, 'flax', flax.__version__, d, getattr(d, 'compute_capability', None))
print('grouped matmuls here:', available_grouped_matmuls(),
      'default bf16:', default_grouped_matmul('bfloat16'))"
sec kernels 120 env JAX_PLATFORMS=$PLATFORM $PY -m pytest -q -p no:cacheprovider -p no:xdist \
  tests/test_grouped.py -k "available_here or unavailable or defaults"
BENCH="$PY scripts/bench_moe_layer.py --preset $PRESET --dtype bfloat16 --repeats 5"
sec raw 120 $BENCH --raw --tiles --no_layer --out "$OUT/raw.json"
sec layer 200 $BENCH --modes einsum scatter dropless --out "$OUT/layer.json"
if [ "$PRESET" = tiny ]; then TRAIN="--configs default --steps 6"; else
  TRAIN="--configs switch-base-8 t5-base-dense --dtype bfloat16 --steps 30"; fi
sec train 300 $PY scripts/bench_train.py $TRAIN --remat none full --scan_layers false true \
  --out "$OUT/train.json"
echo
reports=$(ls "$OUT"/raw.json "$OUT"/layer.json 2>/dev/null)
[ -n "$reports" ] && $PY scripts/bench_moe_layer.py --report $reports 2>&1 | tail -n 40
[ -f "$OUT/train.json" ] && grep -h "step\|peak\|remat=" "$OUT/train.log" | cut -c1-200

#!/usr/bin/env bash
# Issue 12: AutoAttack, standard version, in the default's threat model (L2, radius 0.5), on the same seeded 1,000
# test JPEGs of `weat_c10` (`--n 1000 --seed 0`), by both engines: the reference implementation (pyautoattack) and
# torchattacks' chain, the fallback, chosen with ROBGEN_AUTOATTACK_ENGINE=torchattacks. One thread each; every finished
# batch of 100 is kept under experiments/c10-fast/aa/<name>/ (`--batches-dir`), so rerunning the script after a stop
# continues where it stopped. Reports: experiments/c10-fast/aa/<name>.json.
#   experiments/c10-fast/aa_engines.sh [reference|torchattacks ...]     (default: both, one after the other)
set -u
cd "$(dirname "$0")/../.."
DATA=${DATA:-folder:/tmp/c10}
OUT=experiments/c10-fast/aa
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p $OUT

aa() {  # aa ENGINE
  local name=weat_c10_$1
  [ -f "$OUT/$name.json" ] && return
  ROBGEN_AUTOATTACK_ENGINE=$1 nice -n 5 robgen eval --ckpt weat_c10 --data "$DATA" \
    --attack autoattack --norm l2 --n 1000 --batch-size 100 --batches-dir "$OUT/$name" --json \
    > "$OUT/$name.json.tmp" 2>> "$OUT/$name.log" && mv "$OUT/$name.json.tmp" "$OUT/$name.json"
}

engines=("$@")
[ $# -gt 0 ] || engines=(reference torchattacks)
for engine in "${engines[@]}"; do aa "$engine"; done

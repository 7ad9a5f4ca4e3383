#!/usr/bin/env bash
# Pretrain -> SFT -> chat, on ../shared/data (CPU: about ten minutes).
#   1. one corpus: the Tang/Song poems (title + lines) and the Alpaca demo texts
#   2. a BPE tokenizer (vocab 4096) and token shards of that corpus
#   3. pretraining (configs/poetry.yaml), then SFT on the Alpaca conversations
#      (configs/sft_alpaca_zh.yaml: assistant-only loss, val loss before and after)
#   4. a scripted chat with the SFT model
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=../shared/data
[ -d "$DATA" ] || { echo "demo_sft: error: $DATA not found" >&2; exit 2; }
OUT=runs/demo
mkdir -p "$OUT"
python - "$DATA" "$OUT/corpus.jsonl" <<'PY'
import json, sys
from mylm_jax.data.readers import TextSelector, read_documents
data, out = sys.argv[1], sys.argv[2]
with open(out, "w", encoding="utf-8") as f:
    for d in read_documents([f"{data}/zh_poetry"], TextSelector(template="{title}\n{paragraphs}")):
        f.write(json.dumps({"text": d.text}, ensure_ascii=False) + "\n")
    for d in read_documents([f"{data}/sft/alpaca_zh_demo.json"], TextSelector(template="{instruction}\n{input}\n{output}")):
        f.write(json.dumps({"text": d.text}, ensure_ascii=False) + "\n")
PY
mylm tokenizer train "$OUT/corpus.jsonl" --vocab-size 4096 --pattern zh --out "$OUT/tokenizer.json" --quiet
mylm data prepare "$OUT/corpus.jsonl" --tokenizer "$OUT/tokenizer.json" --out "$OUT/data" --val-fraction 0.02
mylm pretrain --config configs/poetry.yaml "$@"
mylm sft --config configs/sft_alpaca_zh.yaml
printf '%s\n' "请介绍一下你自己。" "写一首关于春天的诗。" "/reset" "如何保持健康？" "/exit" |
  mylm chat --checkpoint "$OUT/sft" --temperature 0.7 --top-p 0.9 --repetition-penalty 1.1 --max-new-tokens 96 |
  tee "$OUT/chat_transcript.txt"

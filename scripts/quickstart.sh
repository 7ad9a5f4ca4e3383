#!/usr/bin/env bash
# The first run: `mylm quickstart` (mylm_jax/quickstart.py) trains a tokenizer, token shards
# and a small GPT on tinyshakespeare, the corpus embedded in the package, into runs/quickstart.
#   bash scripts/quickstart.sh [--out DIR] [--corpus PATH] [section.key=value ...]
set -euo pipefail
cd "$(dirname "$0")/.."
exec mylm quickstart "$@"

"""The measured tables of docs/interop.md: every model variant exported to transformers and compared.

    python scripts/hf_interop_report.py                  # prints the two markdown tables (~1 min on 2 cores)
    python scripts/hf_interop_report.py --out r.json     # and writes the numbers as JSON

Per variant (mylm_jax/variants.py VARIANTS, plus Qwen3-MoE, the one mapped architecture no
variant reaches): a random model exported, loaded by transformers on CPU in float32, and
compared with mylm_jax/interop/reference.py's `check_case`, the function the proof tests
(tests/test_hf_interop.py) assert on: the transformers architecture (or the one-line
refusal), the max abs logit difference on a 512-token prompt (and the largest |logit|, for
scale), whether greedy generation of 32 tokens, the chat template's ids and
import -> export (bit for bit) agree. Then per architecture: a random transformers model,
saved by transformers, imported and exported again, compared bit for bit.

Needs transformers and torch: pip install -e ".[hf,torch]".
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mylm_jax.fileio import atomic_write  # noqa: E402
from mylm_jax.interop.architectures import ARCHITECTURES  # noqa: E402
from mylm_jax.interop.reference import (CASES, check_case, proof_tokenizer, random_checkpoint,  # noqa: E402
                                        roundtrip, write_tokenizer)
from mylm_jax.studies.results import markdown_table  # noqa: E402


def yes(ok: bool) -> str:
    return "yes" if ok else "NO"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="also write the results as JSON here (default: print only)")
    args = parser.parse_args()
    rows, results = [], {"variants": {}, "checkpoints": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in CASES:
            r = check_case(name, Path(tmp) / name)
            results["variants"][name] = r
            if "refused" in r:
                rows.append([name, "none: " + r["refused"].removeprefix("no exact transformers counterpart for "),
                             "-", "-", "-", "-"])
                print(f"{name}: refused", file=sys.stderr, flush=True)
                continue
            rows.append([name, ARCHITECTURES[r["arch"]], f"{r['max_abs']:.1e} ({r['max_logit']:.1f})",
                         yes(r["mylm_greedy"] == r["hf_greedy"]), yes(r["chat_match"]), yes(r["roundtrip"])])
            print(f"{name}: {r['arch']}, max abs {r['max_abs']:.2e}", file=sys.stderr, flush=True)
        print(markdown_table(["variant", "transformers (or why none)", "max abs logit diff (largest logit)",
                              "greedy 32 equal", "chat ids equal", "import -> export bit-exact"], rows))
        tok, rows = proof_tokenizer(), []
        for arch, cls in ARCHITECTURES.items():
            hf = Path(tmp) / f"hf_{arch}"
            random_checkpoint(arch, hf, vocab_size=320)
            write_tokenizer(tok, hf)
            results["checkpoints"][arch] = ok = roundtrip(hf, Path(tmp) / f"again_{arch}")
            rows.append([cls, yes(ok)])
        print(markdown_table(["transformers checkpoint (random weights)", "import -> export bit-exact"], rows))
    if args.out:
        atomic_write(args.out, json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

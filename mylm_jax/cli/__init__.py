"""The `mylm` command: one module per command group, each with add_parser(subparsers) and run(args).

    mylm quickstart [--out DIR] [--corpus C] [overrides]      tokenizer -> shards -> pretraining  (quickstart.py)
    mylm config | params | optim --config X [overrides]       the config, the model, the grouping  (model.py)
    mylm tokenizer train | encode | decode | export-hf | inspect   the BPE tokenizer        (tokenizer.py)
    mylm data prepare | clean INPUT... | inspect DIR          token shards / cleaned JSONL      (data.py)
    mylm pretrain | sft | checkpoint show [--weights] | set-config   training and its runs      (train.py)
    mylm generate | chat --checkpoint RUN_DIR                 a trained model, in a terminal    (generate.py)
    mylm eval RUN_DIR --data DIR | --text FILE...            loss, perplexity, bits per byte   (evaluate.py)
    mylm plot RUN_DIR... | search --config X --space S        the studies' commands             (studies.py)
    mylm export hf RUN_DIR OUT_DIR | import hf HF_DIR OUT_RUN  to and from Hugging Face        (interop.py)
    mylm serve RUN_DIR [--port 8000] [--max-batch 8]          an OpenAI-compatible API + chat page (serve.py)

This package is the top floor: it imports from every layer below and nothing imports it.
Each module imports heavy libraries (jax, orbax, grain) inside its commands, so
`mylm --help` and a mistyped command answer at once.

A user mistake (bad key, bad value, missing file, bad data) prints one line and exits with 2.
A reader that stops early (`mylm checkpoint show runs/x | head`) ends the command quietly,
as it ends other Unix tools (exit 141, the shell's code for SIGPIPE).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from mylm_jax import allocator, startup
from mylm_jax.cli import data, generate, model, quickstart, studies, tokenizer, train
from mylm_jax.cli import evaluate, interop, serve
from mylm_jax.cli.common import USER_ERRORS

GROUPS = (quickstart, model, tokenizer, data, train, generate, studies, evaluate, interop, serve)
# The commands that run compiled steps (allocator.STEP_COMMANDS) start under the faster
# allocator (a re-exec, mylm_jax/allocator.py, done by the console script before this
# module is imported: mylm_jax/launch.py; training says when a better one could be
# installed) and with the persistent compilation cache (mylm_jax/train/compile_cache.py).
# The training commands also start without cyclic garbage collection (mylm_jax/startup.py).


def build_parser(owner: dict | None = None) -> argparse.ArgumentParser:
    """The `mylm` argument parser, every group's commands in it (what `main` parses with;
    tests/test_doc_commands.py parses the docs' examples with it). When `owner` is a dict,
    it is filled with each command's name -> the group module that runs it."""
    parser = argparse.ArgumentParser(prog="mylm", description="MyLM: train language models in JAX.")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        before = set(sub.choices)
        group.add_parser(sub)
        if owner is not None:
            owner.update({name: group for name in set(sub.choices) - before})
    return parser


def main(argv: list[str] | None = None) -> int:
    owner: dict = {}
    args = build_parser(owner).parse_args(argv)
    if args.command in allocator.STEP_COMMANDS and argv is None:
        # A real command line, not a call from Python (tests, notebooks): the process is ours
        # to restart and its jax settings ours to choose.
        startup.begin(args.command)  # done already by the `mylm` script (launch.py)
        from mylm_jax.train import compile_cache
        compile_cache.enable()
        with startup.without(*startup.FLAX_PROBES):  # a command line is no notebook (startup.py)
            importlib.import_module("flax.nnx")
    try:
        owner[args.command].run(args)
        sys.stdout.flush()  # a closed pipe shows up here at the latest, while we still catch it
    except USER_ERRORS as e:  # a user's mistake: one line, no traceback
        print(f"mylm: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader is gone. Point stdout at /dev/null so that Python's own flush at exit
        # does not fail again with "Exception ignored ... BrokenPipeError" (Python's docs, signal).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return 0

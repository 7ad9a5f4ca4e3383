"""`mylm generate` and `mylm chat`: a trained run's checkpoint, the KV-cache generator, a terminal.

    mylm generate --checkpoint runs/x --prompt "ROMEO:" [--max-new-tokens 100 --temperature 0.8
                  --top-k 50 --top-p 0.95 --repetition-penalty 1.1 --seed 0 --num-samples 2]
    mylm chat --checkpoint runs/sft [--system "You are helpful."]   (/reset, /exit)

Tokens are printed as they come: each step decodes everything generated so far and prints
what is new, so a character split over several byte-level tokens appears once complete.
The chat renders the whole conversation with the tokenizer's chat template, then
`<|assistant|>`, and generates until `<|end|>`; the oldest turns are dropped when the
conversation no longer fits the model's context with room for the answer.

The sampling flags are checked (SamplingConfig) before the checkpoint is loaded; a prompt
too long for the context is fitted by mylm_jax/generate.py's rule, with a note on stderr.
Only the tokenizer's ids are ever sampled, even when the model's vocabulary is padded.
"""

from __future__ import annotations

import sys

from mylm_jax.cli.common import HelpFormatter, quiet_libraries
from mylm_jax.config import ConfigError
from mylm_jax.tokenizer.chat import fit_history
from mylm_jax.tokenizer.specials import BOS


def add_sampling_args(p) -> None:
    p.add_argument("--checkpoint", required=True, metavar="RUN_DIR", help="a pretrain or sft run directory")
    p.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
    p.add_argument("--max-new-tokens", type=int,
                   help="tokens to generate per answer (default: min(128, the model's max_seq_len // 2))")
    p.add_argument("--temperature", type=float, default=0.8, help="0: greedy")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k likeliest tokens (0: all)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling: the smallest set with this mass")
    p.add_argument("--repetition-penalty", type=float, default=1.0,
                   help="penalise the tokens already in the text (1: none)")
    p.add_argument("--seed", type=int, default=0, help="the sampling seed")


def max_new_tokens(args, max_seq_len: int | None) -> int:
    """--max-new-tokens, or the default that fits the model: min(128, max_seq_len // 2)
    (before the checkpoint is read: 128, for the flags' check)."""
    if args.max_new_tokens is not None:
        return args.max_new_tokens
    return 128 if max_seq_len is None else max(1, min(128, max_seq_len // 2))


def add_parser(subparsers) -> None:
    g = subparsers.add_parser("generate", help="continue a prompt with a trained model", formatter_class=HelpFormatter)
    add_sampling_args(g)
    g.add_argument("--prompt", default="", help="the text to continue (default: from BOS)")
    g.add_argument("--num-samples", type=int, default=1, help="a batch of samples of the same prompt")
    c = subparsers.add_parser("chat", help="talk to an SFT model (multi-turn, /reset, /exit)",
                              formatter_class=HelpFormatter)
    add_sampling_args(c)
    c.add_argument("--system", default="", help="a system message at the start of every conversation (default: none)")


class Streamer:
    """Prints the text of row 0's new tokens as they arrive."""

    def __init__(self, tokenizer, out=None):
        self.tokenizer, self.ids, self.printed = tokenizer, [], ""
        self.out = out or sys.stdout  # looked up now, not at import (tests swap sys.stdout)

    def __call__(self, tokens_B, active_B) -> None:
        if not active_B[0]:
            return
        self.ids.append(int(tokens_B[0]))
        text = self.tokenizer.decode([i for i in self.ids if i not in self.tokenizer.special_tokens.values()])
        if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
            self.out.write(text[len(self.printed):])
            self.out.flush()
            self.printed = text


def _sampling(args, tok=None, stop_tokens=(), max_seq_len=None):
    """The flags as a SamplingConfig (which range-checks them); with the tokenizer, its
    vocabulary is the limit of what may be sampled (the model's may be padded past it)."""
    from mylm_jax.generate import SamplingConfig
    return SamplingConfig(max_new_tokens(args, max_seq_len), args.temperature, args.top_k, args.top_p,
                          args.repetition_penalty,
                          tuple(stop_tokens), args.seed, vocab_limit=tok.vocab_size if tok is not None else None)


def cmd_generate(args) -> None:
    from mylm_jax.generate import Generator
    from mylm_jax.train.run_dir import RunDir

    _sampling(args)  # bad flags fail now, not after loading the checkpoint
    if args.num_samples < 1:
        raise ConfigError(f"--num-samples must be positive, got {args.num_samples}")
    model, cfg, tok = RunDir.open(args.checkpoint).load_model(args.step)
    bos = tok.bos_id if BOS in tok.special_tokens else tok.eos_id  # an empty prompt starts a document
    prompt = tok.encode(args.prompt) if args.prompt else [bos]
    generator = Generator(model, _sampling(args, tok, [tok.eos_id], cfg.model.max_seq_len))
    print(args.prompt, end="", flush=True)
    outputs = generator([prompt] * args.num_samples, Streamer(tok))
    print()
    for i, ids in enumerate(outputs[1:], start=2):
        print(f"--- sample {i} ---\n{args.prompt}{tok.decode(ids)}")


def cmd_chat(args, lines=None) -> None:
    from mylm_jax.generate import Generator
    from mylm_jax.train.run_dir import RunDir

    _sampling(args)  # bad flags fail now, not after loading the checkpoint
    model, cfg, tok = RunDir.open(args.checkpoint).load_model(args.step)
    if not tok.has_chat_tokens:
        raise ConfigError(f"{args.checkpoint}: the tokenizer has no chat tokens; chat needs an SFT run")
    new_tokens = max_new_tokens(args, cfg.model.max_seq_len)
    generator = Generator(model, _sampling(args, tok, [tok.end_of_turn_id, tok.eos_id], cfg.model.max_seq_len))
    system = [{"role": "system", "content": args.system}] if args.system else []
    messages = list(system)
    room = cfg.model.max_seq_len - new_tokens
    if room < 8:
        raise ConfigError(f"--max-new-tokens {new_tokens} leaves no room for the conversation "
                          f"in a context of {cfg.model.max_seq_len}")
    print("chat: /reset starts over, /exit quits", flush=True)
    piped = not sys.stdin.isatty()  # a script feeds the chat: echo its lines into the transcript
    lines = lines if lines is not None else iter(lambda: input("you> "), None)
    try:
        for line in lines:
            line = line.strip()
            if piped:
                print(line, flush=True)
            if line == "/exit":
                break
            if line == "/reset":
                messages = list(system)
                print("(conversation reset)", flush=True)
                continue
            if not line:
                continue
            messages.append({"role": "user", "content": line})
            prompt, messages = fit_history(tok, messages, room)
            print("assistant> ", end="", flush=True)
            streamer = Streamer(tok)
            answer = generator([prompt], streamer)[0]
            print(flush=True)
            text = tok.decode([i for i in answer if i not in (tok.end_of_turn_id, tok.eos_id)])
            messages.append({"role": "assistant", "content": text})
    except EOFError:
        pass


def run(args) -> None:
    quiet_libraries()
    cmd_generate(args) if args.command == "generate" else cmd_chat(args)

"""`mylm serve`: a trained run behind an OpenAI-compatible HTTP API, with a chat page.

    mylm serve runs/quickstart/run [--host 127.0.0.1] [--port 8000] [--max-batch 8]
                                   [--step N] [--model-name NAME]

Then `http://127.0.0.1:8000/` is the chat page, and any OpenAI client talks to it:
    OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="none").chat.completions.create(...)
The server is mylm_jax/serve/ (page: docs/serving.md); it needs the serve extra
(`pip install -e ".[serve]"`: FastAPI and uvicorn).
"""

from __future__ import annotations

import importlib.util
import socket
from pathlib import Path

from mylm_jax.cli.common import HelpFormatter, quiet_libraries
from mylm_jax.config import ConfigError


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("serve", help="an OpenAI-compatible HTTP API and a chat page for a trained run",
                              formatter_class=HelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a pretrain or sft run directory")
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000, help="the TCP port")
    p.add_argument("--max-batch", type=int, default=8,
                   help="decoding slots: requests generated together in one batch (more wait for a free slot)")
    p.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
    p.add_argument("--model-name", help="the model's name in the API (default: the run directory's name)")


def check_port(host: str, port: int) -> None:
    """A one-line error now rather than uvicorn's log after the model has loaded."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise ConfigError(f"--host {host} --port {port}: cannot listen there ({e.strerror})") from None


def run(args) -> None:
    if args.max_batch < 1:
        raise ConfigError(f"--max-batch must be at least 1, got {args.max_batch}")
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port must be in [1, 65535], got {args.port}")
    if not all(importlib.util.find_spec(name) for name in ("fastapi", "uvicorn")):
        raise ConfigError('mylm serve needs FastAPI and uvicorn: pip install -e ".[serve]"')
    from mylm_jax.train.run_dir import RunDir

    run_dir = RunDir.open(args.run_dir)  # a bad directory fails now, before the port and the model
    check_port(args.host, args.port)
    import uvicorn

    from mylm_jax.serve.app import Engine, create_app

    quiet_libraries()
    model, cfg, tok = run_dir.load_model(args.step)
    name = args.model_name or Path(args.run_dir).resolve().name
    print(f"compiling the decoder: {args.max_batch} slots x {cfg.model.max_seq_len} positions ...", flush=True)
    engine = Engine(model, tok, name, args.max_batch)
    print(f"serving {name} ({args.run_dir}) on http://{args.host}:{args.port}  (chat page: /, API: /v1)", flush=True)
    uvicorn.run(create_app(engine), host=args.host, port=args.port, log_level="warning")

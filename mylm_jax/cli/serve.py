"""`mylm serve`: a trained run behind an OpenAI-compatible HTTP API, with a chat page.

    mylm serve runs/quickstart/run [--host 127.0.0.1] [--port 8000] [--max-batch 8]
                                   [--step N] [--model-name NAME]
                                   [--api-key KEY] [--allowed-host NAME ...] [the limits below]

Then `http://127.0.0.1:8000/` is the chat page, and any OpenAI client talks to it:
    OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="none").chat.completions.create(...)
The server is mylm_jax/serve/ (page: docs/serving.md); it needs the serve extra
(`pip install -e ".[serve]"`: FastAPI and uvicorn). Every limit (body size, queue, token
budgets, timeouts, connections, the drain at SIGTERM) is a ServeOptions field
(mylm_jax/serve/options.py), checked before the model loads.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import socket
from pathlib import Path

from mylm_jax.cli.common import HelpFormatter, quiet_libraries
from mylm_jax.config import ConfigError
from mylm_jax.serve.options import API_KEY_ENV, LOCAL_HOSTS, ServeOptions


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
    d = ServeOptions()
    g = p.add_argument_group("who may call (docs/serving.md, Safe to expose)")
    g.add_argument("--api-key",
                   help=f"clients must send Authorization: Bearer KEY to /v1 (default: ${API_KEY_ENV}, "
                        "else no key; the variable keeps the key out of `ps`)")
    g.add_argument("--allowed-host", action="append", metavar="NAME",
                   help="a Host name to answer besides localhost, 127.0.0.1, [::1] and --host; repeat for more; "
                        "'*': any (requests naming another host get 400, pages on other sites 403)")
    g = p.add_argument_group("limits")
    g.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes, help="a larger request body: 413")
    g.add_argument("--max-queue", type=int,
                   help="choices that may wait for a slot (n counts each); more: 429 (default: 4 per slot)")
    g.add_argument("--max-request-tokens", type=int,
                   help="prompt + n x max_tokens of one request; more: 400 (default: 4 x the context)")
    g.add_argument("--max-total-tokens", type=int,
                   help="the same, summed over the requests in flight; more: 429 (default: 4 x context x slots)")
    g.add_argument("--header-timeout", type=float, default=d.header_timeout,
                   help="seconds to send a request's headers; then the connection is closed")
    g.add_argument("--body-timeout", type=float, default=d.body_timeout, help="seconds to send its body; then 408")
    g.add_argument("--idle-timeout", type=float, default=d.idle_timeout,
                   help="seconds an idle keep-alive connection stays open")
    g.add_argument("--max-connections", type=int, default=d.max_connections,
                   help="open connections; a request beyond them: 503")
    g.add_argument("--drain-timeout", type=float, default=d.drain_timeout,
                   help="at SIGTERM, seconds the running requests get to finish (waiting ones get 503 at once)")


def check_port(host: str, port: int) -> None:
    """A one-line error now rather than uvicorn's log after the model has loaded."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise ConfigError(f"--host {host} --port {port}: cannot listen there ({e.strerror})") from None


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def options(args) -> ServeOptions:
    """The flags as ServeOptions (which checks them). The address given to --host is a name
    clients may use, unless it is every interface's (0.0.0.0, ::)."""
    hosts = list(LOCAL_HOSTS) + list(args.allowed_host or [])
    if args.host not in ("0.0.0.0", "::", ""):
        hosts.append(f"[{args.host}]" if ":" in args.host else args.host)
    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV) or None
    return ServeOptions(api_key=api_key, allowed_hosts=tuple(dict.fromkeys(hosts)),
                        max_body_bytes=args.max_body_bytes, max_queue=args.max_queue,
                        max_request_tokens=args.max_request_tokens, max_total_tokens=args.max_total_tokens,
                        header_timeout=args.header_timeout, body_timeout=args.body_timeout,
                        idle_timeout=args.idle_timeout, max_connections=args.max_connections,
                        drain_timeout=args.drain_timeout)


def run(args) -> None:
    if args.max_batch < 1:
        raise ConfigError(f"--max-batch must be at least 1, got {args.max_batch}")
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port must be in [1, 65535], got {args.port}")
    limits = options(args)
    if not all(importlib.util.find_spec(name) for name in ("fastapi", "uvicorn")):
        raise ConfigError('mylm serve needs FastAPI and uvicorn: pip install -e ".[serve]"')
    from mylm_jax.train.run_dir import RunDir

    run_dir = RunDir.open(args.run_dir)  # a bad directory fails now, before the port and the model
    check_port(args.host, args.port)
    from mylm_jax.serve.app import Engine, create_app
    from mylm_jax.serve.server import make_server

    quiet_libraries()
    model, cfg, tok = run_dir.load_model(args.step)
    name = args.model_name or Path(args.run_dir).resolve().name
    print(f"compiling the decoder: {args.max_batch} slots x {cfg.model.max_seq_len} positions ...", flush=True)
    engine = Engine(model, tok, name, args.max_batch, options=limits)
    if not _is_loopback(args.host) and limits.api_key is None:
        print(f"mylm: note: --host {args.host} without --api-key: anyone who can reach this address can use the "
              f"model (set {API_KEY_ENV} or --api-key)", flush=True)
    print(f"serving {name} ({args.run_dir}) on http://{args.host}:{args.port}  (chat page: /, API: /v1)", flush=True)
    try:
        make_server(create_app(engine), args.host, args.port).run()
    except KeyboardInterrupt:  # a second Ctrl-C during the drain, as uvicorn.run takes it
        pass

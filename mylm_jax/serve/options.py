"""What `mylm serve` lets a client do: who may call, how big and how slow a request may be, how
much work may wait. One frozen dataclass, checked once when it is made (its fields are `mylm
serve`'s flags, and errors name the flag), read by guard.py (who, how big), admission.py (how
much) and server.py (how slow, and the drain at shutdown). docs/serving.md, "Safe to expose",
says what each limit answers.
"""

from __future__ import annotations

from dataclasses import dataclass

from mylm_jax.config import ConfigError, check_fields

# The names a server on this machine answers to, whatever port it is on. A page on another
# site that resolves its own name to 127.0.0.1 (DNS rebinding) still sends its own name.
LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]")
ANY_HOST = "*"
API_KEY_ENV = "MYLM_API_KEY"


def host_name(name: str) -> str:
    """A host as compared: lower case, IPv6 without brackets ("[::1]" and "::1" are one host)."""
    return name.strip().lower().removeprefix("[").removesuffix("]")


@dataclass(frozen=True)
class ServeOptions:
    # Bearer token every /v1 request must carry (None: no key asked).
    api_key: str | None = None
    # Host header names served ("*": any); Origin headers must name one of them too.
    allowed_hosts: tuple[str, ...] = LOCAL_HOSTS
    # A request body larger than this is refused before it is read (413).
    max_body_bytes: int = 1 << 20
    # Choices (n counts each) that may wait for a slot; more: 429. None: 4 per slot.
    max_queue: int | None = None
    # prompt + n x max_tokens of one request; more: 400. None: 4 contexts.
    max_request_tokens: int | None = None
    # The same sum over every request in flight; more: 429. None: 4 contexts per slot.
    max_total_tokens: int | None = None
    # Seconds a connection may take to send a request's line and headers (then it is closed),
    # and its body (then 408).
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    # Seconds an idle keep-alive connection stays open.
    idle_timeout: float = 5.0
    # Open connections at most; a request beyond it gets uvicorn's 503.
    max_connections: int = 256
    # Seconds the running requests get to finish after SIGTERM (waiting ones get 503 at once).
    drain_timeout: float = 30.0

    RANGES = {"max_body_bytes": "> 0", "max_queue": ">= 0", "max_request_tokens": "> 0",
              "max_total_tokens": "> 0", "header_timeout": "> 0", "body_timeout": "> 0", "idle_timeout": "> 0",
              "max_connections": "> 0", "drain_timeout": ">= 0"}

    def __post_init__(self):
        check_fields(self, lambda key: f"--{key.replace('_', '-')}")
        if self.api_key is not None and not self.api_key.strip():
            raise ConfigError(f"--api-key (or {API_KEY_ENV}) must not be empty")
        if not self.allowed_hosts or any(not host_name(h) for h in self.allowed_hosts):
            raise ConfigError(f"--allowed-host must name a host (or {ANY_HOST}), got {list(self.allowed_hosts)}")

    def allows_host(self, name: str) -> bool:
        return ANY_HOST in self.allowed_hosts or host_name(name) in {host_name(h) for h in self.allowed_hosts}

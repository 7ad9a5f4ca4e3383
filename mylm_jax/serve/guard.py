"""The checks in front of every route (ASGI middleware), in the order they run:

    Host      must be an allowed host (default: localhost, 127.0.0.1, [::1])   else 400
    Origin    when a browser sends one, it must name an allowed host          else 403
    API key   with --api-key, every /v1 request: Authorization: Bearer KEY    else 401
    POST      Content-Type application/json                                   else 415
              a body of at most --max-body-bytes: a larger Content-Length is
              refused before a byte is read, a chunked body as soon as it
              passes the limit                                                 else 413
              the whole body within --body-timeout seconds                      else 408

Why. A server on 127.0.0.1 is reachable from every web page the user opens: a page may POST
to it (a "simple" text/plain request needs no CORS preflight), and a page whose own name
resolves to 127.0.0.1 (DNS rebinding) may even read the replies. Such requests carry the
page's name in Host and its site in Origin, so checking both shuts them out, and JSON-only
bodies make every cross-site POST need a preflight the server never grants. The body limit
keeps one request from holding megabytes (and the event loop) before any other check.

The body is read here, whole, and handed to the route as one message; later receive() calls
go to the server's own, so a route still hears the client disconnect. The errors are
OpenAI's JSON; 413 and 408 close the connection (the unread rest of the body is not parsed).
"""

from __future__ import annotations

import asyncio
import hmac
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import JSONResponse

from mylm_jax.serve.options import API_KEY_ENV, ServeOptions
from mylm_jax.serve.protocol import ApiError


def error_response(e: ApiError, close: bool = False) -> JSONResponse:
    headers = dict(e.headers, **({"Connection": "close"} if close else {}))
    return JSONResponse(e.body(), status_code=e.status, headers=headers)


class _ClientGone(Exception):
    """The client disconnected while sending its body: there is no one to answer."""


def _host_of(header: str) -> str:
    """The name in a Host header: "[::1]:8000" -> "[::1]", "localhost:8000" -> "localhost"."""
    if header.startswith("["):
        return header[:header.find("]") + 1]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class Guard:
    def __init__(self, app, options: ServeOptions):
        self.app, self.options = app, options

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        try:
            headers = Headers(scope=scope)
            self._check_caller(scope, headers)
            if scope["method"] == "POST":
                receive = self._replay(await self._read_body(headers, receive), receive)
        except _ClientGone:
            return
        except ApiError as e:
            return await error_response(e, close=e.status in (408, 413))(scope, receive, send)
        await self.app(scope, receive, send)

    def _check_caller(self, scope, headers: Headers) -> None:
        options = self.options
        host = headers.get("host", "")
        if not options.allows_host(_host_of(host)):
            raise ApiError(400, f"this server does not answer to the Host {host!r} (it answers to "
                                f"{', '.join(options.allowed_hosts)}; start it with --allowed-host NAME to add one)",
                           code="host_not_allowed")
        origin = headers.get("origin")
        if origin is not None and not options.allows_host(urlsplit(origin).hostname or ""):  # "null": no site
            raise ApiError(403, f"requests from the web page at {origin!r} are refused: its site is not an allowed "
                                "host (--allowed-host)", code="origin_not_allowed")
        if options.api_key is not None and scope["path"].startswith("/v1"):
            scheme, _, key = headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not key.strip():
                raise ApiError(401, "this server needs an API key: send Authorization: Bearer KEY (the key it was "
                                    f"started with, --api-key or {API_KEY_ENV})", code="invalid_api_key",
                               headers={"WWW-Authenticate": "Bearer"})
            if not hmac.compare_digest(key.strip().encode(), options.api_key.encode()):  # constant time
                raise ApiError(401, "incorrect API key provided", code="invalid_api_key",
                               headers={"WWW-Authenticate": "Bearer"})
        if scope["method"] == "POST":
            media = headers.get("content-type", "").split(";")[0].strip().lower()
            if media != "application/json":
                raise ApiError(415, f"the request body must be JSON: send Content-Type: application/json "
                                    f"(got {media or 'none'})", code="unsupported_media_type")

    async def _read_body(self, headers: Headers, receive) -> bytes:
        limit = self.options.max_body_bytes
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise self._too_large(f"{int(declared)} bytes")
        chunks, size = [], 0
        try:
            async with asyncio.timeout(self.options.body_timeout):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise _ClientGone
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > limit:
                        raise self._too_large(f"more than {limit} bytes")
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        return b"".join(chunks)
        except TimeoutError:
            raise ApiError(408, f"the request body did not arrive within {self.options.body_timeout:g} s "
                                "(--body-timeout)", code="request_timeout") from None

    def _too_large(self, size: str) -> ApiError:
        return ApiError(413, f"the request body is {size}; this server takes at most {self.options.max_body_bytes} "
                             "(--max-body-bytes)", code="request_too_large")

    @staticmethod
    def _replay(body: bytes, receive):
        """receive() for the route: the body read here as one message, then the server's own."""
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()
        return replay

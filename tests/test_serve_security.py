"""Who may use `mylm serve`: an optional API key (OpenAI's Bearer header, compared in constant
time), a Host allow-list (localhost names by default) and an Origin check, so that no web
page can drive a local server or read its replies (DNS rebinding); JSON-only POST bodies;
no pages that fetch from a CDN."""

from __future__ import annotations

import hmac

import httpx
import pytest

from tests.serve_helpers import MODEL_NAME, own_server, server, shared_run

KEY = "sk-local-test"
COMPLETIONS = "/v1/completions"
# A body that passes every check before the route and then fails there (max_tokens past the
# context): a 400 from the route proves the request got through, with nothing generated.
THROUGH = {"model": MODEL_NAME, "prompt": "x", "max_tokens": 1000}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return shared_run(tmp_path_factory)


@pytest.fixture(scope="module")
def url(run):
    return server(run)[0]


@pytest.fixture(scope="module")
def keyed(run):
    background, _ = own_server(run, api_key=KEY)
    yield background.url
    background.stop()


def _error(response, status: int, code: str | None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code, error
    return error


def _through(response) -> None:
    """The request passed the guard: the route itself answered (a 400 naming max_tokens)."""
    assert response.status_code == 400 and response.json()["error"]["param"] == "max_tokens", response.text


def test_with_an_api_key_every_v1_request_needs_it(keyed, monkeypatch):
    missing = httpx.post(keyed + COMPLETIONS, json=THROUGH)
    assert "send Authorization: Bearer KEY" in _error(missing, 401, "invalid_api_key")["message"]
    assert missing.headers["www-authenticate"] == "Bearer"
    for header in (f"Bearer {KEY}x", f"Basic {KEY}", KEY, "Bearer"):
        _error(httpx.get(keyed + "/v1/models", headers={"Authorization": header}), 401, "invalid_api_key")
    assert httpx.get(keyed + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}).json()["data"][0]["id"] == \
        MODEL_NAME
    _through(httpx.post(keyed + COMPLETIONS, json=THROUGH, headers={"Authorization": f"bearer {KEY}"}))
    # The page and the health check need no key (the page asks for it, for its own requests).
    assert httpx.get(keyed + "/health").status_code == 200 and httpx.get(keyed + "/").status_code == 200
    openai = pytest.importorskip("openai", reason="the openai client is not installed")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=keyed + "/v1", api_key="wrong", max_retries=0).models.list()
    assert [m.id for m in openai.OpenAI(base_url=keyed + "/v1", api_key=KEY, max_retries=0).models.list()] == \
        [MODEL_NAME]
    # The comparison is hmac's constant-time one.
    calls = []
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: calls.append((a, b)) or a == b)
    httpx.get(keyed + "/v1/models", headers={"Authorization": "Bearer guess"})
    assert calls == [(b"guess", KEY.encode())]


def test_only_localhost_names_are_answered_by_default(url):
    port = url.rsplit(":", 1)[1]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "LOCALHOST", "127.0.0.1"):
        assert httpx.get(url + "/v1/models", headers={"Host": host}).status_code == 200, host
    for host in ("attacker.example", f"attacker.example:{port}", "127.0.0.1.nip.io", "192.168.1.5"):
        error = _error(httpx.get(url + "/v1/models", headers={"Host": host}), 400, "host_not_allowed")
        assert "--allowed-host" in error["message"]


def test_allowed_host_widens_the_list_and_star_allows_any(run):
    named, _ = own_server(run, allowed_hosts=("localhost", "127.0.0.1", "[::1]", "gpu-box.lan"))
    anything, _ = own_server(run, allowed_hosts=("*",))
    try:
        assert httpx.get(named.url + "/v1/models", headers={"Host": "gpu-box.lan:8000"}).status_code == 200
        _error(httpx.get(named.url + "/v1/models", headers={"Host": "other.lan"}), 400, "host_not_allowed")
        assert httpx.get(anything.url + "/v1/models", headers={"Host": "whatever.example"}).status_code == 200
    finally:
        named.stop()
        anything.stop()


def test_a_page_on_another_site_cannot_drive_the_server(url):
    # The probe that used to get a 200: a text/plain POST (no CORS preflight) from a foreign page.
    foreign = {"Content-Type": "text/plain", "Origin": "https://attacker.example"}
    _error(httpx.post(url + COMPLETIONS, content=b'{"prompt": "x"}', headers={**foreign, "Host": "attacker.example"}),
           400, "host_not_allowed")  # DNS rebinding: the page's own name in Host
    _error(httpx.post(url + COMPLETIONS, content=b'{"prompt": "x"}', headers=foreign), 403, "origin_not_allowed")
    _error(httpx.get(url + "/v1/models", headers={"Origin": "null"}), 403, "origin_not_allowed")  # sandboxed / file:
    # The chat page itself (same origin) gets through.
    _through(httpx.post(url + COMPLETIONS, json=THROUGH, headers={"Origin": url}))
    _through(httpx.post(url + COMPLETIONS, json=THROUGH, headers={"Origin": "http://localhost:3000"}))


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", "application/jsonp"])
def test_a_post_that_is_not_json_is_415(url, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    response = httpx.post(url + COMPLETIONS, content=b'{"model": "tiny", "prompt": "x", "max_tokens": 1000}',
                          headers=headers)
    assert "Content-Type: application/json" in _error(response, 415, "unsupported_media_type")["message"]


def test_json_with_a_charset_is_json(url):
    _through(httpx.post(url + COMPLETIONS, content=httpx.Request("POST", url, json=THROUGH).content,
                        headers={"Content-Type": "Application/JSON; charset=utf-8"}))


def test_no_page_loads_scripts_from_a_cdn(url):
    for path in ("/docs", "/redoc", "/docs/oauth2-redirect"):
        assert httpx.get(url + path).status_code == 404, path
    schema = httpx.get(url + "/openapi.json")
    assert schema.status_code == 200 and "/v1/completions" in schema.json()["paths"]

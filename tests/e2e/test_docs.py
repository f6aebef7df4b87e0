"""/docs and /redoc work offline and without the token, on the real daemon's TCP listener.

A browser on the TCP listener gets the pages, every script, style and icon they reference,
and the OpenAPI document, all from the daemon itself, with no Authorization header; the
pages name no other host (no CDN, no online validator). The API itself still needs the token.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.host.netns import call_in as in_netns
from tests.e2e.helpers import E2EDaemon

LISTEN = "127.0.0.1:8080"  # inside the test's namespace
REFERENCE = re.compile(r"""(?:src|href|spec-url)="([^"]+)"|url: '([^']+)'|\+ '(/[^']+)'""")


def fetch_docs(page: str) -> dict[str, httpx.Response]:
    """GET the page over TCP without a token, then every URL it references."""
    with httpx.Client(base_url=f"http://{LISTEN}", timeout=30) as browser:
        html = browser.get(page)
        assert html.status_code == 200, html.text
        assert html.headers["content-type"].startswith("text/html")
        for foreign in ("http:", "https:", "//"):
            assert foreign not in html.text, f"{page} names another host ({foreign})"
        references = {next(g for g in m.groups() if g) for m in REFERENCE.finditer(html.text)}
        assert references, html.text
        return {page: html} | {url: browser.get(url) for url in sorted(references)}


@pytest.fixture
def daemon(netns: str, tmp_path: Path) -> Iterator[E2EDaemon]:
    """The daemon with its TCP listener (inside the test's namespace)."""
    daemon = E2EDaemon(netns, tmp_path)
    daemon.extra_env = {"KVMNETD_LISTEN": LISTEN}
    try:
        yield daemon.start()
    finally:
        daemon.kill()


def test_docs_pages_and_their_assets_load_from_the_daemon_without_a_token(
    netns: str, daemon: E2EDaemon
) -> None:
    token = daemon.state_dir.joinpath("admin-token").read_text().strip()
    docs = in_netns(netns, lambda: fetch_docs("/docs"))
    redoc = in_netns(netns, lambda: fetch_docs("/redoc"))

    def api(headers: dict[str, str]) -> int:
        with httpx.Client(base_url=f"http://{LISTEN}", timeout=30) as client:
            return client.get("/v1/bridges", headers=headers).status_code

    without = in_netns(netns, lambda: api({}))
    with_token = in_netns(netns, lambda: api({"Authorization": f"Bearer {token}"}))

    assert {
        "/docs/static/swagger-ui-bundle.js",
        "/docs/static/swagger-ui.css",
        "/openapi.json",
        "/docs/oauth2-redirect",
        "/docs/static/favicon.png",
    } <= docs.keys(), docs.keys()
    assert {"/docs/static/redoc.standalone.js", "/openapi.json"} <= redoc.keys(), redoc.keys()
    for url, response in (docs | redoc).items():
        assert response.status_code == 200, f"{url}: {response.status_code} {response.text[:200]}"
        assert response.content, url
    assert (
        docs["/docs/static/swagger-ui-bundle.js"]
        .headers["content-type"]
        .startswith(("application/javascript", "text/javascript"))
    )
    assert docs["/openapi.json"].json()["info"]["title"] == "kvmnetd"
    assert '"validatorUrl": null' in docs["/docs"].text  # no badge from an online validator
    assert (without, with_token) == (401, 200)

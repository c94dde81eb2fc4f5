"""routes/docs.py: /openapi.json, /docs and /redoc as served, and the static files, in
process through httpx.ASGITransport.

The pages rendered in a browser and the property-based tests against the document run against
a real gateway process, in test_docs.py.
"""

from __future__ import annotations

import httpx
import pytest

from tests.asgi import Local
from tests.helpers import assert_error

pytestmark = pytest.mark.anyio


async def test_openapi_json_is_served(aclient: httpx.AsyncClient) -> None:
    response = await aclient.get("/openapi.json")

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json()["openapi"] == "3.1.0"


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_doc_pages_are_served_under_a_strict_csp(
    aclient: httpx.AsyncClient, page: str
) -> None:
    response = await aclient.get(page)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    csp = response.headers["content-security-policy"]
    assert "script-src 'self';" in csp
    assert "unsafe-eval" not in csp
    assert "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]


async def test_vendored_scripts_are_served(aclient: httpx.AsyncClient) -> None:
    for path in (
        "/static/vendor/swagger-ui/swagger-ui-bundle.js",
        "/static/vendor/swagger-ui/swagger-ui.css",
        "/static/vendor/redoc/redoc.standalone.js",
        "/static/docs/swagger-init.js",
    ):
        response = await aclient.get(path)
        assert response.status_code == 200, path
        assert response.headers["x-request-id"]


async def test_the_page_loads_its_script_and_style_from_the_gateway(
    aclient: httpx.AsyncClient,
) -> None:
    script = await aclient.get("/static/dashboard.js")
    style = await aclient.get("/static/dashboard.css")

    assert script.status_code == 200
    assert "javascript" in script.headers["content-type"]
    assert style.status_code == 200
    assert style.headers["content-type"].startswith("text/css")


async def test_the_static_copy_of_the_page_has_the_same_policy(guarded: Local) -> None:
    async with guarded.client(admin=False) as browser:
        response = await browser.get("/static/dashboard.html")

    assert response.status_code == 200
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert response.headers["x-content-type-options"] == "nosniff"


async def test_the_docs_and_the_static_files_are_open_without_a_token(local: Local) -> None:
    async with local.client(admin=False) as anyone:
        statuses = [
            (await anyone.get(path)).status_code
            for path in ("/openapi.json", "/docs", "/redoc", "/static/dashboard.js")
        ]
        missing = await anyone.get("/static/no-such-file.js")

    assert statuses == [200, 200, 200, 200]
    assert_error(missing, 404, "not_found")

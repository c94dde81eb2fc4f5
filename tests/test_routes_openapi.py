"""The OpenAPI document: generated from the schemas, covering every route of the app."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import msgspec
import pytest
from starlette.routing import Route

from app import create_app
from ollama_host.settings import parse_settings
from routes.errors import ErrorBody
from routes.openapi import Operation, Reply, document, error
from routes.page import STATIC
from routes.seed.schemas import AskRequest


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    settings = parse_settings(["--data", str(tmp_path_factory.mktemp("spec"))])
    app = create_app(settings)
    doc: dict[str, Any] = json.loads(app.state.openapi)
    doc["x-routes"] = [
        # Starlette's `{model:path}` is OpenAPI's `{model}`.
        (re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path), method.lower())
        for route in app.routes
        if isinstance(route, Route)
        for method in route.methods or ()
        if method != "HEAD"
    ]
    return doc


def test_every_route_of_the_app_is_documented(spec: dict[str, Any]) -> None:
    documented = {(path, method) for path, ops in spec["paths"].items() for method in ops}

    assert set(map(tuple, spec["x-routes"])) == documented
    assert ("/api/v1/ai/ask_async", "get") in documented


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


# GET /v1/models answers OpenAI's clients and Anthropic's (by `anthropic-version`), each in
# its shape: a status both may get is either shape, one that only one may get is its shape.
MODELS_ERRORS = (
    _ref("OpenAIError"),
    _ref("AnthropicError"),
    {"anyOf": [_ref("OpenAIError"), _ref("AnthropicError")]},
)


def _error_shape(path: str) -> str:
    """Each front's errors keep its clients' shape: Ollama's under /api/ (but the gateway's
    own /api/v1/), Anthropic's under /v1/messages, OpenAI's under the rest of /v1/, the
    gateway's everywhere else."""
    if path.startswith("/v1/messages"):
        return "AnthropicError"
    if path.startswith("/v1/"):
        return "OpenAIError"
    if path.startswith("/api/") and not path.startswith("/api/v1/"):
        return "OllamaError"
    return "ErrorBody"


def test_every_response_has_a_status_a_request_id_and_errors_one_shape(
    spec: dict[str, Any],
) -> None:
    shapes = set()
    for path, ops in spec["paths"].items():
        error_ref = {"$ref": f"#/components/schemas/{_error_shape(path)}"}
        for method, op in ops.items():
            assert op["responses"], (path, method)
            for status, response in op["responses"].items():
                assert re.fullmatch(r"[1-5][0-9][0-9]", status)
                assert "X-Request-Id" in response["headers"]
                if int(status) >= 400 and path.startswith("/v1/models"):
                    assert response["content"]["application/json"]["schema"] in MODELS_ERRORS
                elif int(status) >= 400:
                    assert response["content"] == {"application/json": {"schema": error_ref}}
                    shapes.add(error_ref["$ref"])
    assert len(shapes) == 4


def test_components_are_msgspec_schemas(spec: dict[str, Any]) -> None:
    _, expected = msgspec.json.schema_components(
        [AskRequest, ErrorBody], ref_template="#/components/schemas/{name}"
    )

    for name, schema in expected.items():
        assert spec["components"]["schemas"][name] == schema


def test_ask_sync_answers_text_or_json(spec: dict[str, Any]) -> None:
    ok = spec["paths"]["/api/v1/ai/ask_sync"]["post"]["responses"]["200"]["content"]

    assert ok["text/plain"] == {"schema": {"type": "string"}}
    assert ok["application/json"] == {"schema": {"$ref": "#/components/schemas/AskReply"}}


def test_stream_documents_each_event_and_its_data(spec: dict[str, Any]) -> None:
    for method in ("get", "post"):
        ok = spec["paths"]["/api/v1/ai/ask_async"][method]["responses"]["200"]
        schema = ok["content"]["text/event-stream"]["schema"]

        data_of = {
            variant["properties"]["event"]["const"]: variant["properties"]["data"]["contentSchema"]
            for variant in schema["oneOf"]
        }
        assert data_of == {
            name: {"$ref": f"#/components/schemas/{kind}"}
            for name, kind in [
                ("start", "StartEvent"),
                ("queued", "QueuedEvent"),
                ("loading", "LoadingEvent"),
                ("token", "TokenEvent"),
                ("done", "Usage"),
                ("error", "ErrorBody"),
            ]
        }


def test_query_parameters_come_from_the_struct(spec: dict[str, Any]) -> None:
    params = {p["name"]: p for p in spec["paths"]["/api/v1/admin/dashboard"]["get"]["parameters"]}

    assert params["limit"]["schema"] == {
        "type": "integer",
        "minimum": 1,
        "maximum": 1000,
        "default": 100,
    }
    # `Status | None`: a query parameter is absent or a status, never null.
    assert params["status"]["schema"] == {"enum": ["cancelled", "error", "ok"]}
    assert not any(p["required"] for p in params.values())
    assert "DashboardParams" not in spec["components"]["schemas"]


def test_a_routes_module_describes_itself() -> None:
    class Export(msgspec.Struct):
        rows: int

    extra = {
        "/api/v1/admin/export": {
            "GET": Operation(
                summary="Export",
                tag="admin",
                replies={200: Reply(description="rows", json=Export), 422: error("bad")},
            )
        }
    }

    doc = document([extra], title="t", version="1")

    op = doc["paths"]["/api/v1/admin/export"]["get"]
    assert op["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Export"
    }
    assert doc["components"]["schemas"]["Export"]["required"] == ["rows"]
    assert set(doc["components"]["schemas"]) == {"Export", "ErrorBody", "ErrorDetail"}


@pytest.mark.parametrize("page", ["swagger.html", "redoc.html"])
def test_doc_pages_load_only_shipped_files_and_no_inline_script(page: str) -> None:
    html = (STATIC / "docs" / page).read_text()

    sources = re.findall(r'<(?:script|link)[^>]*(?:src|href)="([^"]+)"', html)
    assert sources
    for source in sources:
        assert source.startswith("static/"), source
        assert (STATIC.parent / source).is_file(), source
    # Every <script> has a src and an empty body: nothing inline for a CSP to forbid.
    assert re.findall(r"<script[^>]*>(.*?)</script>", html, re.S) == [""] * html.count("<script")
    assert "http" not in html


def test_vendored_files_keep_their_licences() -> None:
    vendor = STATIC / "vendor"
    for folder in ("swagger-ui", "redoc"):
        assert (vendor / folder / "LICENSE").is_file()
    assert "Apache License" in (vendor / "swagger-ui" / "LICENSE").read_text()
    assert "MIT License" in (vendor / "redoc" / "LICENSE").read_text()
    assert Path(vendor / "README.md").read_text().count("5.35.0") == 1


def test_the_models_operation_shows_both_apis_shapes(spec: dict[str, Any]) -> None:
    listed = spec["paths"]["/v1/models"]["get"]
    one = spec["paths"]["/v1/models/{model}"]["get"]

    def schema(op: dict[str, Any], status: str) -> Any:
        return op["responses"][status]["content"]["application/json"]["schema"]

    assert schema(listed, "200") == {"anyOf": [_ref("ModelList"), _ref("AnthropicModelList")]}
    assert schema(one, "200") == {"anyOf": [_ref("Model"), _ref("AnthropicModel")]}
    # Only an Anthropic client can send a bad `limit`; both can lack a key.
    assert schema(listed, "400") == _ref("AnthropicError")
    assert schema(listed, "401") == {"anyOf": [_ref("OpenAIError"), _ref("AnthropicError")]}
    params = {p["name"]: p for p in listed["parameters"]}
    assert set(params) == {"anthropic-version", "limit", "after_id", "before_id"}
    assert params["anthropic-version"]["required"] is False
    assert params["limit"]["schema"] == {
        "type": "integer",
        "minimum": 1,
        "maximum": 1000,
        "default": 20,
    }
    assert [name for entry in listed["security"] for name in entry][:2] == ["xApiKey", "apiKey"]

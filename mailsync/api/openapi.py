"""The answers the middleware gives any route (408, 413, 429, 431, 503), added to the
OpenAPI document FastAPI builds from the routes; and FastAPI's own 422 for a parameter that
fails validation replaced by the 400 invalid_request the API answers instead."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from mailsync.api.overload import HEALTH_PATH
from mailsync.api.schemas import ErrorEnvelope
from mailsync.settings import Settings

_ERROR_REF = {"$ref": "#/components/schemas/ErrorEnvelope"}
_RETRY_AFTER = {
    "description": "Seconds to wait before retrying.",
    "schema": {"type": "integer", "minimum": 1},
}
# /health answers 503 with its own body when the database or Prefect is down.
_HEALTH_DEGRADED = {
    "type": "object",
    "properties": {
        "status": {"type": "string", "enum": ["degraded"]},
        "checks": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    "required": ["status", "checks"],
}


def _limit_responses(settings: Settings) -> dict[int, str]:
    return {
        408: f"request_timeout: the body did not fully arrive within "
        f"{settings.body_timeout_seconds:g} s (Connection: close)",
        413: f"payload_too_large: a body over {settings.max_body_bytes} bytes",
        429: "rate_limited: over the request quota of the API key or client address "
        "(see Retry-After and X-RateLimit-*)",
        431: f"request_header_fields_too_large: more than {settings.max_header_count} header "
        f"fields or {settings.max_header_bytes} bytes of them",
        503: "service_unavailable: the server is busy (more requests in flight than it "
        "serves at once); retry after Retry-After",
    }


def document_limits(app: FastAPI, settings: Settings) -> None:
    """Every operation documents the answers the middleware can give it (the routes document
    their own): added to the OpenAPI document FastAPI builds, or appended to the description
    of a status the route already documents; Retry-After on every 429 and 503."""
    texts = _limit_responses(settings)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = FastAPI.openapi(app)  # builds and caches app.openapi_schema
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        if "ErrorEnvelope" not in components:
            model = ErrorEnvelope.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(model.pop("$defs", {}))
            components["ErrorEnvelope"] = model
        for path, operations in schema.get("paths", {}).items():
            for operation in operations.values():
                responses = operation.setdefault("responses", {})
                _validation_is_400(responses)
                for status, text in texts.items():
                    _document(responses, str(status), text, health=path == HEALTH_PATH)
        for unused in ("HTTPValidationError", "ValidationError"):
            components.pop(unused, None)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


_FASTAPI_422 = "#/components/schemas/HTTPValidationError"
_INVALID = "invalid_request: a parameter or the body failed validation (error.param names it)"


def _validation_is_400(responses: dict[str, Any]) -> None:
    """errors.py answers a request FastAPI cannot validate with 400 invalid_request, never
    the 422 FastAPI documents for it (a route's own 422 stays)."""
    generated = responses.get("422", {}).get("content", {}).get("application/json", {})
    if generated.get("schema", {}).get("$ref") != _FASTAPI_422:
        return
    del responses["422"]
    _document(responses, "400", _INVALID, health=False)


def _document(responses: dict[str, Any], status: str, text: str, *, health: bool) -> None:
    response = responses.get(status)
    if response is None:
        response = responses[status] = {
            "description": text,
            "content": {"application/json": {"schema": dict(_ERROR_REF)}},
        }
    elif text not in response.get("description", ""):
        response["description"] = f"{response.get('description', '')}; or {text}".lstrip("; ")
    if health and status == "503":
        response["description"] = f"degraded: the database or Prefect is unavailable; or {text}"
        response["content"] = {
            "application/json": {"schema": {"anyOf": [dict(_ERROR_REF), _HEALTH_DEGRADED]}}
        }
    if status in ("429", "503"):
        # Sent with every 429 and 503 but /health's degraded answer.
        response.setdefault("headers", {})["Retry-After"] = {**_RETRY_AFTER, "required": not health}

"""Errors in OpenAI's JSON shape: `{"error": {"message", "type", "param", "code"}}` with the right status.

Every problem a client can cause is an `APIError` raised at the boundary; pydantic's validation
errors and Starlette's 404/405 are reshaped into the same form. Nothing else reaches a client:
an unexpected exception is logged and answered with a bare 500 (see `app.py`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from starlette.responses import JSONResponse

# OpenAI's error types per status.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "requests",
    499: "client_closed_request",
    500: "internal_error",
    503: "service_unavailable",
    504: "timeout",
}


class APIError(Exception):
    """A request the server refuses, with the status, field (`param`) and code OpenAI would send."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: Mapping[str, str] | None = None, type: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = dict(headers or {})
        self.type = type or ERROR_TYPES.get(status, "invalid_request_error")

    def body(self) -> dict[str, Any]:
        """The JSON body: `{"error": {...}}`."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def internal_error() -> APIError:
    """The one 500 a client sees: no details (they are in the server's log)."""
    return APIError(500, "The server had an error while processing your request.", code="internal_error")


def field_path(loc: Sequence[str | int]) -> str:
    """`("messages", 0, "role")` -> `messages[0].role`."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def validation_error(errors: Sequence[Mapping[str, Any]]) -> APIError:
    """Pydantic's errors of a request body as one 400 naming the first bad field, all problems in the message.

    A union (e.g. `prompt`: a string or a list) fails once per member, each location tagged with the
    member's type (`("prompt", "list[int]", 3)`); such a field is reported once, at the union's own
    path, with what each member expected.
    """
    invalid_json = [err for err in errors if err.get("type") == "json_invalid"]
    if invalid_json:
        detail = invalid_json[0].get("ctx", {}).get("error", "")
        return APIError(400, f"We could not parse the JSON body of your request ({detail}). "
                             "The API expects a JSON object, sent with Content-Type: application/json.",
                        code="invalid_json")
    # A union's errors group at the field the union is (the location up to the first member tag).
    groups: dict[tuple, list[tuple[tuple, bool, Mapping[str, Any]]]] = {}
    for err in errors:
        loc = tuple(err.get("loc", ()))
        loc = loc[1:] if loc[:1] == ("body",) else loc
        tag = next((i for i, part in enumerate(loc) if _is_union_tag(part)), None)
        stripped = tuple(part for part in loc if not _is_union_tag(part))
        groups.setdefault(loc if tag is None else loc[:tag], []).append((stripped, tag is not None, err))
    problems: list[tuple[str, str]] = []  # (path, message)
    for key, group in groups.items():
        if any(tagged for _, tagged, _ in group):
            path = field_path(key)
            wanted = list(dict.fromkeys(err.get("msg", "invalid") for _, _, err in group))
            problems.append((path, f"Invalid value for '{path}': {' or '.join(wanted[:4])}"))
            continue
        for loc, _, err in group:
            path = field_path(loc)
            if not path:
                problems.append(("", "The request body is missing: send a JSON object" if err.get("type") == "missing"
                                 else f"The request body must be a JSON object ({err.get('msg', 'invalid')})"))
            elif err.get("type") == "missing":
                problems.append((path, f"'{path}' is a required property"))
            else:
                problems.append((path, f"Invalid value for '{path}': {err.get('msg', 'invalid')}"))
    param = problems[0][0] or None if problems else None
    message = "; ".join(dict.fromkeys(message for _, message in problems)) or "Invalid request"
    return APIError(400, message, param=param, code="invalid_value" if param else None)


def _is_union_tag(part: str | int) -> bool:
    """Whether a location part names a union member (`str`, `list[int]`, `TextPart`) rather than a field."""
    return isinstance(part, str) and (part in _TYPE_TAGS or "[" in part or part[:1].isupper())


_TYPE_TAGS = {"str", "int", "float", "bool", "dict", "list", "none", "function-after", "function-before"}


def sse_error(error: APIError) -> bytes:
    """An error inside an event stream that has already started (vLLM's form)."""
    return f"data: {json.dumps(error.body())}\n\n".encode()

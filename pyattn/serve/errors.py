"""Errors in the OpenAI API's shape: ``{"error": {"message", "type", "param", "code"}}`` with the HTTP status that
says whose fault it was. Every failure a request can meet ends here, so that a client never sees a bare 500 page
and a malformed request never reaches a model."""

from __future__ import annotations

import logging
from typing import Any, Dict, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("pyattn.serve")

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "server_error",
    504: "server_error",
}


class ApiError(Exception):
    """An answer other than success: status, message, and OpenAI's ``param`` / ``code`` fields."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: Optional[str] = None,
        code: Optional[str] = None,
        headers: Optional[Dict[str, str]] = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}


def error_body(status: int, message: str, param: Optional[str] = None, code: Optional[str] = None) -> Dict[str, Any]:
    return {"error": {"message": message, "type": _TYPES.get(status, "server_error"), "param": param, "code": code}}


def error_response(
    status: int,
    message: str,
    param: Optional[str] = None,
    code: Optional[str] = None,
    headers: Optional[Dict[str, str]] = None,
) -> JSONResponse:
    return JSONResponse(error_body(status, message, param, code), status_code=status, headers=headers)


def overloaded(what: str) -> ApiError:
    """503 with Retry-After: the queue in front of a model is full."""
    return ApiError(
        503, f"the {what} queue is full; retry later", code="server_overloaded", headers={"Retry-After": "1"}
    )


# what a parameter whose value matched none of its types should have been
_EXPECTED = {
    "input": "a string or a list of strings",
    "prompt": "a string, a list of one string or a list of token ids",
    "stop": "a string or a list of strings",
    "messages": "a list of {role, content} objects",
}


def _param(loc) -> Optional[str]:
    """A pydantic error location as OpenAI names parameters: ('body', 'input', 3) -> 'input[3]'. The names of
    union members pydantic puts in the location ('str', 'list[str]') are left out."""
    parts = [p for p in loc if p != "body"]
    if not parts:
        return None
    out = str(parts[0])
    for p in parts[1:]:
        if isinstance(p, int):
            out += f"[{p}]"
        elif p.isidentifier() and p not in ("str", "int", "float", "bool", "list", "dict"):
            out += f".{p}"
    return out


def _validation_message(exc: RequestValidationError) -> tuple:
    errs = exc.errors()
    if not errs:
        return "invalid request", None
    first = errs[0]
    if first.get("type") == "json_invalid":
        return f"the body is not valid JSON: {first.get('ctx', {}).get('error', first.get('msg'))}", None
    param = _param(first.get("loc", ()))
    if first.get("type") == "missing":
        return f"missing required parameter {param!r}", param
    if param is None:
        return f"the body must be a JSON object ({first.get('msg')})", None
    if param in _EXPECTED:
        return f"invalid value for {param!r}: expected {_EXPECTED[param]}", param
    return f"invalid value for {param!r}: {first.get('msg')}", param


def install(app: FastAPI) -> None:
    """The exception handlers that give every error the OpenAI shape."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.param, exc.code, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return error_response(400, message, param, "invalid_value" if param else "invalid_request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        status = exc.status_code
        message = str(exc.detail) if exc.detail else "error"
        if status == 404:
            message = f"no such endpoint: {request.method} {request.url.path}"
        elif status == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        code = {404: "not_found", 405: "method_not_allowed", 408: "body_timeout", 413: "body_too_large"}.get(status)
        return error_response(status, message, code=code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(500, f"internal error: {type(exc).__name__}: {exc}", code="internal_error")

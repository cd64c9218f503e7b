"""Every error the API sends is JSON `{"detail": "<what to change>"}`, with `errors` (one entry
per field) for validation problems. User input never produces a 500 or a traceback."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from musicgen_server.errors import MusicgenError

log = logging.getLogger(__name__)

EXAMPLE_BODY = '{"prompt": "upbeat electronic music", "duration": 5}'


class ApiError(Exception):
    """An error with a status, a message and optionally the field it is about."""

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.field = field
        self.headers = headers

    def body(self) -> dict[str, Any]:
        if self.field is None:
            return {"detail": self.message}
        return {
            "detail": f"{self.field}: {self.message}",
            "errors": [{"field": self.field, "message": self.message}],
        }


def not_found(message: str) -> ApiError:
    return ApiError(404, message)


def field_error(field: str, message: str, status_code: int = 422) -> ApiError:
    return ApiError(status_code, message, field=field)


def _plain(error: dict[str, Any]) -> tuple[str, str]:
    """(field, message) for one pydantic error, in words a person can act on."""
    location = [str(part) for part in error.get("loc", ()) if part not in ("body", "query", "path", "header")]
    field = ".".join(location) or "body"
    kind = error.get("type", "")
    message = str(error.get("msg", "is not valid"))
    if kind == "missing":
        message = "is required"
    elif kind == "extra_forbidden":
        message = "is not a field of this request: check its spelling (the fields are listed at /docs)"
    elif kind.startswith("value_error"):
        message = message.removeprefix("Value error, ")
    elif field == "body" and kind in ("model_attributes_type", "dict_type", "model_type"):
        message = f"must be a JSON object such as {EXAMPLE_BODY}"
    elif kind == "finite_number":
        message = "must be a finite number"
    else:
        message = message.replace("Input should be", "must be")
    return field, message


async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = list(exc.errors())
    broken = [e for e in errors if e.get("type") == "json_invalid"]
    if broken:
        reason = (broken[0].get("ctx") or {}).get("error", "it does not parse")
        position = broken[0].get("loc", ("body", "?"))[-1]
        detail = f"the request body is not valid JSON ({reason} at character {position}): send {EXAMPLE_BODY}"
        return JSONResponse(
            {"detail": detail, "errors": [{"field": "body", "message": detail}]}, status_code=400
        )
    problems = [_plain(error) for error in errors]
    body = {
        "detail": "; ".join(f"{field}: {message}" for field, message in problems),
        "errors": [{"field": field, "message": message} for field, message in problems],
    }
    return JSONResponse(jsonable_encoder(body), status_code=422)


async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status_code, headers=exc.headers)


async def _musicgen_error(request: Request, exc: MusicgenError) -> JSONResponse:
    return JSONResponse({"detail": exc.message}, status_code=exc.status_code)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    detail = exc.detail
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"there is no {request.url.path}: see /docs for the endpoints"
    elif exc.status_code == 405:
        detail = f"{request.method} is not allowed on {request.url.path}: see /docs"
    return JSONResponse(
        {"detail": detail}, status_code=exc.status_code, headers=getattr(exc, "headers", None)
    )


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"detail": "internal server error; it was logged"}, status_code=500)


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation)  # type: ignore[arg-type]
    app.add_exception_handler(ApiError, _api_error)  # type: ignore[arg-type]
    app.add_exception_handler(MusicgenError, _musicgen_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected)

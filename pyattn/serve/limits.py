"""Request bodies held to a size and a pace, before any route reads them.

An ASGI middleware: a declared Content-Length over the limit is answered 413 without reading a byte; a body that
grows past the limit as it streams (chunked, or a lying Content-Length) is cut off with 413 when it does; a client
that stops sending in the middle of its body for ``body_timeout`` seconds (a slowloris) gets 408 and the connection
closes. Both errors are Starlette HTTPExceptions raised from ``receive``, so that they reach the route's exception
handlers and leave in the OpenAI error shape. Once the body is complete ``receive`` is passed through untouched (a
streaming response waits on it for the client's disconnect)."""

from __future__ import annotations

import asyncio
from typing import Callable, Container

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import error_response


class BodyLimit:
    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int,
        max_upload_bytes: int,
        upload_paths: Container[str],
        body_timeout: float,
    ):
        self.app = app
        self.max_body_bytes, self.max_upload_bytes = max_body_bytes, max_upload_bytes
        self.upload_paths, self.body_timeout = upload_paths, body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_upload_bytes if scope["path"] in self.upload_paths else self.max_body_bytes
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                size = -1
            if size < 0 or size > limit:
                message = f"the body is {size} bytes; the limit here is {limit}" if size >= 0 else "bad Content-Length"
                status, code = (413, "body_too_large") if size >= 0 else (400, "invalid_request")
                response = error_response(status, message, code=code, headers={"Connection": "close"})
                await response(scope, receive, send)
                return
        await self.app(scope, self._guarded(receive, limit), send)

    def _guarded(self, receive: Receive, limit: int) -> Callable:
        received = 0
        done = False

        async def guarded() -> Message:
            nonlocal received, done
            if done:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.body_timeout)
            except asyncio.TimeoutError:
                raise HTTPException(
                    408,
                    f"the body did not arrive: no data for {self.body_timeout:g} s",
                    headers={"Connection": "close"},
                ) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(
                        413, f"the body exceeds the limit of {limit} bytes", headers={"Connection": "close"}
                    )
                done = not message.get("more_body", False)
            else:
                done = True
            return message

        return guarded

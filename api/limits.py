"""Request body size limit, enforced before a body is parsed (also for chunked uploads)."""

from __future__ import annotations

from typing import Any

from api.problems import ApiProblem, problem_response
from tuner.errors import FieldProblem


class BodySizeLimit:
    """ASGI middleware: answer 413 when a request body exceeds `max_bytes`."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self, size: int | str) -> Any:
        return problem_response(
            ApiProblem(
                413,
                "Request body too large",
                f"the body has {size} bytes, the limit is {self.max_bytes}",
                [FieldProblem("body", f"{size} bytes", f"is over the limit of {self.max_bytes} bytes", "send a smaller body (the server setting max_body_bytes sets the limit)")],
            )
        )

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large(int(declared))(scope, receive, send)
            return
        received = 0
        limit = self.max_bytes
        too_large = self._too_large

        async def counting_receive() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge(received)
            return message

        try:
            await self.app(scope, counting_receive, send)
        except _BodyTooLarge as exc:
            await too_large(f"more than {exc.args[0]}")(scope, receive, send)


class _BodyTooLarge(Exception):
    pass

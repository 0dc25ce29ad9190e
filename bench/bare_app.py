"""The floor for `bench.http_doors`: a route that parses a send and answers 202.

It uses waq's contract, with no Redis, no authentication and no middleware.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from producer import SendRequest

__all__ = ["create_app"]


def create_app() -> FastAPI:
    """The bare app (uvicorn ``--factory``)."""
    app = FastAPI()

    @app.get("/healthz")
    async def healthz() -> dict[str, bool]:
        return {"ok": True}

    @app.post("/v1/messages", status_code=202)
    async def send(body: dict[str, Any]) -> dict[str, str]:
        """Validate like the gateway does, answer like it does; store nothing."""
        request = SendRequest.model_validate({**body, "phone_number_id": "106540352242922"})
        return {"id": "m_bench", "status": "queued", "to": request.to}

    return app

"""The baseline of the ingest benchmark: the least an ASGI app on uvicorn can do for a
POST (read the body, answer 202 with a small JSON body), with the same server settings
as kappaflow's (uvloop, httptools, one process, no access log)."""

from __future__ import annotations


async def app(scope, receive, send):  # type: ignore[no-untyped-def]
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 202,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", b"14")]})  # fmt: skip
    await send({"type": "http.response.body", "body": b'{"accepted":1}'})

"""A minimal HTTP/1.1 keep-alive load client (asyncio streams), light enough that the
server, not the client, is what is measured. Run as a separate process:

    python bench/httpload.py HOST PORT PATH CONTENT_TYPE BODIES_FILE SECONDS CONNECTIONS

BODIES_FILE holds request bodies separated by a line with a single NUL byte; each
connection cycles through them. Prints a JSON summary: requests, ok (2xx), seconds."""

from __future__ import annotations

import asyncio
import json
import sys
import time


async def connection(
    host: str, port: int, requests: list[bytes], until: float, counts: dict
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    n = 0
    while time.perf_counter() < until:
        writer.write(requests[n % len(requests)])
        n += 1
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        await reader.readexactly(length)
        counts["requests"] += 1
        counts["ok"] += 200 <= status < 300
    writer.close()


async def main() -> None:
    host, port, path, content_type, bodies_file, seconds, connections = sys.argv[1:8]
    with open(bodies_file, "rb") as file:
        bodies = file.read().split(b"\n\x00\n")
    requests = [
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
        for body in bodies
    ]
    counts = {"requests": 0, "ok": 0}
    started = time.perf_counter()
    until = started + float(seconds)
    await asyncio.gather(
        *(connection(host, int(port), requests, until, counts) for _ in range(int(connections)))
    )
    print(json.dumps({**counts, "seconds": time.perf_counter() - started}))


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())

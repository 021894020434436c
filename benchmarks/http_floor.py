"""The floor under the router's CPU per request: an ASGI app that does nothing, served the way a
router worker serves (`shardrec.serving.router.main.server_config`: uvloop, the guarded httptools
protocol, no access log), answering every POST with a fixed JSON body the size of a router answer
at k=10. A measurement aid for `benchmarks/router_cpu.py --codes floor`, not a product path.

    python benchmarks/http_floor.py [--port 0]

What this process spends per request is what HTTP/1.1 parsing, the ASGI cycle and the socket
calls cost in Python on this machine, before any routing, fan-out, merging or encoding.
"""

from __future__ import annotations

import argparse
import sys

from starlette.types import Receive, Scope, Send

from shardrec.serving.router.main import LISTEN_BACKLOG, server_config
from shardrec.serving.sockets import bound_tcp_socket

_ITEMS = ",".join(f'{{"item_id":"item-{i:07d}","score":0.{i:06d}}}' for i in range(10))
ANSWER = (
    f'{{"items":[{_ITEMS}],"index_version":"v1","partial":false,"shards_answered":4,"shards_total":4}}'
).encode()


def _headers(body: bytes) -> list[tuple[bytes, bytes]]:
    return [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]


_POST, _OTHER = (ANSWER, _headers(ANSWER)), (b"{}", _headers(b"{}"))


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body", False):
        pass  # read the whole body, as the router does, and drop it
    body, headers = _POST if scope["method"] == "POST" else _OTHER
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    import uvicorn

    sock = bound_tcp_socket(args.host, args.port, no_delay=True)
    sock.listen(LISTEN_BACKLOG)
    print(f"http_floor listening on http://{args.host}:{sock.getsockname()[1]}", flush=True)
    uvicorn.Server(server_config(app, loop="uvloop", log_level="warning")).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())

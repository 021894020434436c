"""HTTP helpers for the control plane's endpoints: TLS context, GET, a minimal Kubernetes REST client.

Stdlib only; proxies bypassed because everything is on loopback.
Part of e2e/controlplane (cluster.py puts this directory on sys.path; see its docstring).
"""

from __future__ import annotations

import http.client
import json
import ssl
import urllib.error
import urllib.request
from typing import Any

from pki import Pki


def _tls_context(pki: Pki, client_cert: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
    if client_cert:
        ctx.load_cert_chain(str(pki.cert), str(pki.key))
    return ctx


def http_get(url: str, ctx: ssl.SSLContext | None = None, timeout: float = 5.0) -> tuple[int, str]:
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if ctx is not None:
        handlers.append(urllib.request.HTTPSHandler(context=ctx))
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(url, timeout=timeout) as resp:
            return int(resp.status), resp.read().decode(errors="replace")
    except urllib.error.HTTPError as err:
        return int(err.code), err.read().decode(errors="replace")


class ApiClient:
    """Just enough of a Kubernetes REST client to create nodes and poll readiness (no third-party deps)."""

    def __init__(self, base_url: str, pki: Pki) -> None:
        self.base_url = base_url
        self.opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=_tls_context(pki, True))
        )

    def request(
        self, method: str, path: str, body: dict[str, Any] | None = None, timeout: float = 10.0
    ) -> tuple[int, dict[str, Any]]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.base_url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json", "Accept": "application/json"},
        )
        try:
            with self.opener.open(req, timeout=timeout) as resp:
                return int(resp.status), json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as err:
            raw = err.read()
            try:
                return int(err.code), json.loads(raw or b"{}")
            except ValueError:
                return int(err.code), {"message": raw.decode(errors="replace")}


_PROBE_ERRORS = (OSError, http.client.HTTPException, ValueError)

"""One webhook POST, guarded: the target is resolved and checked right before connecting, and
the connection goes to the address that was checked, never to the name again.

How (no DNS rebinding way in): the host is resolved once (`ssrf.public_addresses`), every
address is checked, and the request is sent to `scheme://<checked IP>:port/path` with the
`Host` header of the original URL and, for https, the original name as TLS SNI and as the name
the certificate must match (httpx2's `sni_hostname` extension). Nothing resolves the name a
second time, so what was checked is what is connected to. Proxies from the environment are
ignored (they would connect elsewhere), redirects are not followed (a 3xx is a failure), the
whole attempt (resolution included) has one deadline, and at most MAX_RESPONSE_BYTES of the
answer are read.
"""

import asyncio
import ssl
import time
from dataclasses import dataclass

import httpx2

from app.webhooks import ssrf

MAX_RESPONSE_BYTES = 64 * 1024
MAX_ADDRESSES = 4  # addresses of one name tried in turn when a connection is refused
USER_AGENT = "GPT-Image-Hub-Webhooks/1"

_ssl_context: ssl.SSLContext | None = None


def ssl_context() -> ssl.SSLContext:
    """One verifying context per process (building one loads the trust store)."""
    global _ssl_context
    if _ssl_context is None:
        _ssl_context = httpx2.create_ssl_context()
    return _ssl_context


@dataclass(frozen=True)
class Answer:
    """What one attempt got: the receiver's status, or why there was none."""

    status_code: int | None
    error: str | None
    duration_ms: int

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300

    @property
    def gone(self) -> bool:
        return self.status_code == 410


async def post(url: str, body: bytes, headers: dict[str, str], *, allow_private: bool,
               timeout_s: float) -> Answer:
    """POST `body` to `url` once; never raises for anything the target does."""
    started = time.perf_counter()

    def answer(status: int | None, error: str | None) -> Answer:
        return Answer(status, error[:500] if error else None,
                      round((time.perf_counter() - started) * 1000))

    try:
        async with asyncio.timeout(timeout_s):
            status, detail = await _post(url, body, headers, allow_private=allow_private,
                                         timeout_s=timeout_s)
    except ssrf.TargetRefused as exc:
        return answer(None, f"refused: {exc}")
    except TimeoutError:
        return answer(None, f"timed out after {timeout_s:g} s")
    except httpx2.HTTPError as exc:
        return answer(None, f"{type(exc).__name__}: {exc}" if str(exc)
                      else type(exc).__name__)
    except (OSError, ssl.SSLError) as exc:
        return answer(None, f"{type(exc).__name__}: {exc}")
    if 200 <= status < 300 or status == 410:
        return answer(status, None)
    return answer(status, f"HTTP {status}{detail}")


async def _post(url: str, body: bytes, headers: dict[str, str], *, allow_private: bool,
                timeout_s: float) -> tuple[int, str]:
    target = ssrf.parse(url)
    addresses = await ssrf.public_addresses(target, allow_private=allow_private)
    by_name = ssrf.literal(target.host) is None
    extensions = {"sni_hostname": target.host} if by_name and target.url.scheme == "https" else {}
    sent_headers = {"User-Agent": USER_AGENT, "Content-Type": "application/json", **headers,
                    "Host": target.url.netloc.decode("ascii")}
    async with httpx2.AsyncClient(timeout=timeout_s, follow_redirects=False, trust_env=False,
                                  verify=ssl_context()) as client:
        refused: httpx2.ConnectError | None = None
        for address in addresses[:MAX_ADDRESSES]:
            pinned = target.url.copy_with(host=str(address))
            try:
                async with client.stream("POST", pinned, content=body, headers=sent_headers,
                                         extensions=extensions) as response:
                    text = await read_bounded(response)
                    return response.status_code, describe(response, text)
            except httpx2.ConnectError as exc:  # nothing was sent: the next address may do
                refused = exc
        assert refused is not None
        raise refused


async def read_bounded(response: httpx2.Response) -> bytes:
    """At most MAX_RESPONSE_BYTES of the body (the rest is dropped with the connection)."""
    kept = bytearray()
    async for chunk in response.aiter_raw():
        kept += chunk[:MAX_RESPONSE_BYTES - len(kept)]
        if len(kept) >= MAX_RESPONSE_BYTES:
            break
    return bytes(kept)


def describe(response: httpx2.Response, body: bytes) -> str:
    """For the delivery log: where a redirect pointed (it is not followed), or the start of
    an error answer."""
    if 300 <= response.status_code < 400:
        return f" (redirect to {response.headers.get('location', '?')[:200]} not followed)"
    text = body[:200].decode("utf-8", "replace").strip()
    return f": {text}" if text and not 200 <= response.status_code < 300 else ""

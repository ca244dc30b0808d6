"""The HTTP clients of upstream backends, behind one small interface: POST a JSON body, get the
status, the headers and the body (whole, or as it arrives).

Plain-HTTP upstreams (a vLLM, llama-server or LM Studio on the network, the usual case on a
gateway's hot path) and ``https`` ones with ``http2 = false`` go through aiohttp, whose HTTP/1.1
client costs about a fifth of httpx's CPU per request (``benchmarks/gateway.py``). ``https``
upstreams that may offer HTTP/2 go through httpx, which negotiates it. Both keep one pool of
keep-alive connections per upstream and report failures below HTTP as one
:class:`TransportFailure`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

import aiohttp
import httpx
from yarl import URL

FailureKind = Literal["connect", "connect_timeout", "read_timeout", "broken"]

_KEEPALIVE_SECONDS = 30.0
_READ_SIZE = 64 * 1024


class TransportFailure(Exception):
    """The exchange failed below HTTP: the upstream could not be reached (``connect``), did
    not connect or answer in time (``connect_timeout``, ``read_timeout``), or the connection
    broke (``broken``). ``cause`` names the underlying error."""

    def __init__(self, kind: FailureKind, cause: str) -> None:
        super().__init__(f"{kind}: {cause}")
        self.kind: FailureKind = kind
        self.cause = cause


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds to connect, to wait between bytes read, to send, and for a pooled connection."""

    connect: float
    read: float
    write: float
    pool: float


class UpstreamResponse(Protocol):
    """An answer whose status and headers have arrived; the body is read on demand."""

    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]:
        """Looked up without regard to case."""
        ...

    async def read(self) -> bytes:
        """The whole body."""
        ...

    def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives, in pieces of any size."""
        ...


class UpstreamHttp(Protocol):
    """One upstream's connection pool."""

    def post(
        self, path: str, body: bytes, timeouts: Timeouts
    ) -> contextlib.AbstractAsyncContextManager[UpstreamResponse]:
        """POST ``body`` (JSON) to ``path`` under the base URL. Leaving the context releases
        the connection (back to the pool if the body was read to its end)."""
        ...

    async def aclose(self) -> None:
        """Close every connection."""
        ...


def open_client(
    base_url: str, headers: Mapping[str, str], *, max_connections: int, http2: bool
) -> UpstreamHttp:
    """The pool for an upstream at ``base_url``: httpx where HTTP/2 may be negotiated (``https``
    and ``http2``), else aiohttp. Call it on the event loop that will use the pool."""
    if http2 and base_url.startswith("https://"):
        return HttpxClient(base_url, headers, max_connections=max_connections, http2=True)
    return AiohttpClient(base_url, headers, max_connections=max_connections)


# -- aiohttp (HTTP/1.1) ------------------------------------------------------------------------


class _AiohttpResponse:
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    @property
    def status(self) -> int:
        return self._response.status

    @property
    def headers(self) -> Mapping[str, str]:
        return self._response.headers

    async def read(self) -> bytes:
        try:
            return await self._response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _aiohttp_failure(exc) from exc

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_chunked(_READ_SIZE):
                yield chunk
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _aiohttp_failure(exc) from exc


class AiohttpClient:
    """HTTP/1.1 keep-alive pool on aiohttp."""

    def __init__(self, base_url: str, headers: Mapping[str, str], *, max_connections: int) -> None:
        self._base = base_url.rstrip("/")
        self._urls: dict[str, URL] = {}
        connector = aiohttp.TCPConnector(
            limit=max_connections, keepalive_timeout=_KEEPALIVE_SECONDS
        )
        # No cookies: a gateway must not carry one client's cookies into another's request.
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers={**headers, "Content-Type": "application/json"},
            cookie_jar=aiohttp.DummyCookieJar(),
            raise_for_status=False,
        )

    def _url(self, path: str) -> URL:
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = URL(self._base + path)
        return url

    @contextlib.asynccontextmanager
    async def post(
        self, path: str, body: bytes, timeouts: Timeouts
    ) -> AsyncIterator[_AiohttpResponse]:
        # aiohttp's `connect` bounds the wait for a pooled connection and the connect itself;
        # writes have no bound of their own (the request's deadline still holds).
        timeout = aiohttp.ClientTimeout(
            connect=timeouts.pool, sock_connect=timeouts.connect, sock_read=timeouts.read
        )
        try:
            response = await self._session.post(self._url(path), data=body, timeout=timeout)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _aiohttp_failure(exc) from exc
        try:
            yield _AiohttpResponse(response)
        finally:
            response.release()

    async def aclose(self) -> None:
        await self._session.close()


def _aiohttp_failure(exc: BaseException) -> TransportFailure:
    cause = type(exc).__name__
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return TransportFailure("connect_timeout", cause)
    if isinstance(exc, TimeoutError):  # aiohttp's SocketTimeoutError among them
        return TransportFailure("read_timeout", cause)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return TransportFailure("connect", cause)
    return TransportFailure("broken", cause)


# -- httpx (HTTP/2 where offered) --------------------------------------------------------------


class _HttpxResponse:
    def __init__(self, response: httpx.Response) -> None:
        self._response = response

    @property
    def status(self) -> int:
        return self._response.status_code

    @property
    def headers(self) -> Mapping[str, str]:
        return self._response.headers

    async def read(self) -> bytes:
        try:
            return await self._response.aread()
        except httpx.HTTPError as exc:
            raise _httpx_failure(exc) from exc

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.aiter_raw():
                yield chunk
        except httpx.HTTPError as exc:
            raise _httpx_failure(exc) from exc


class HttpxClient:
    """A pool on httpx: HTTP/2 with ``https`` upstreams that offer it, else HTTP/1.1."""

    def __init__(
        self,
        base_url: str,
        headers: Mapping[str, str],
        *,
        max_connections: int,
        http2: bool,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        limits = httpx.Limits(
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=_KEEPALIVE_SECONDS,
        )
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers={**headers, "Content-Type": "application/json"},
            limits=limits,
            http2=http2,
            transport=transport,
        )

    @contextlib.asynccontextmanager
    async def post(
        self, path: str, body: bytes, timeouts: Timeouts
    ) -> AsyncIterator[_HttpxResponse]:
        timeout = httpx.Timeout(
            connect=timeouts.connect, read=timeouts.read, write=timeouts.write, pool=timeouts.pool
        )
        request = self._client.build_request("POST", path, content=body, timeout=timeout)
        try:
            response = await self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise _httpx_failure(exc) from exc
        try:
            yield _HttpxResponse(response)
        finally:
            await response.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()


def _httpx_failure(exc: httpx.HTTPError) -> TransportFailure:
    cause = type(exc).__name__
    if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
        return TransportFailure("connect_timeout", cause)
    if isinstance(exc, httpx.TimeoutException):
        return TransportFailure("read_timeout", cause)
    if isinstance(exc, httpx.ConnectError):
        return TransportFailure("connect", cause)
    return TransportFailure("broken", cause)

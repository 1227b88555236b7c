"""Microsoft Graph adapter: one client per customer tenant, raw JSON for bulk reads, msgraph-sdk for small calls.

Why raw JSON for bulk: msgraph-sdk model deserialization costs ~7 ms per object (reference/azure.md §4); 180k devices
would take ~20 CPU minutes. So bulk lists go through the same httpx client and transport as the SDK (one retry
layer, see http_retry.py) but are parsed with orjson. Small calls may use :attr:`GraphClient.sdk` (typed models).

Raw requests do **not** pass msgraph-core's middleware chain: ``AsyncGraphTransport`` runs the chain only for
requests that carry kiota request options (``kiota_request_options``), i.e. requests built by the SDK's request
adapter. Raw requests go straight to the retry transport; everything they need (client-request-id, the token,
redirect and error handling) is done here.

Tokens go only to Graph: :meth:`GraphClient._send_once`, the one place the bearer token is attached, refuses any
URL whose scheme, host and port differ from ``GRAPH_BASE_URL``'s or whose path is not under ``/v1.0/`` or ``/beta/``
(:func:`graph_url_allowed`). That covers ``$batch``, ``@odata.nextLink`` paging and links stored in the ``cursors``
table alike; :class:`GraphUrlRejectedError` is a :class:`~shared_code.errors.CursorExpiredError`, so a stored cursor
that fails the check starts a fresh round. Redirects are never followed (kiota's RedirectHandler is removed from the
SDK's chain too): a 3xx is an error, not a hop to another host with our token.

Errors are mapped from status to the taxonomy in exactly one place, :func:`raise_for_graph`.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote, urlsplit

import httpx
import orjson

from shared_code.adapters.credentials import TenantCredentials
from shared_code.adapters.http_retry import RetryTransport, UsageMeter
from shared_code.adapters.pacer import GraphPacer, PacedTransport
from shared_code.errors import (
    CursorExpiredError,
    FatalError,
    NotFoundError,
    PermissionMissingError,
    RetriableError,
)

if TYPE_CHECKING:
    from msgraph import GraphServiceClient

T = TypeVar("T")

# Public cloud's Graph scope; a national cloud's is its Graph root + "/.default" (Container passes it: the token
# audience is the cloud's Graph resource even when GRAPH_BASE_URL points elsewhere, e.g. the local simulator).
GRAPH_SCOPE = "https://graph.microsoft.com/.default"
# Graph's documented delta-resync signals (reference/graph.md §4).
_RESYNC_CODES = frozenset({"syncStateNotFound", "resyncRequired", "syncStateInvalid"})
# Characters left unescaped in OData query values so URLs stay readable in logs ($filter=displayName eq 'x').
_ODATA_SAFE = "$,'()/:@"


class GraphUrlRejectedError(CursorExpiredError):
    """A URL (a nextLink, a stored delta link, an absolute path) is not a Graph URL of ``GRAPH_BASE_URL``.

    The token is not sent. It is a CursorExpiredError so a stored cursor holding such a link starts a fresh round.
    """


def graph_url_allowed(url: str, base_url: str) -> bool:
    """Whether ``url`` may carry the Graph token: same scheme, host and port as ``base_url``, path under a version.

    Dot segments (``/v1.0/../x``, also percent-encoded) and userinfo (``https://graph.microsoft.com@evil``) are
    refused, so the check cannot be walked around.
    """
    try:
        target, base = urlsplit(url), urlsplit(base_url)
        target_port, base_port = target.port, base.port
    except ValueError:
        return False
    if target.scheme.lower() != "https" or base.scheme.lower() != "https":
        return False
    if target.username is not None or target.password is not None:
        return False
    if (target.hostname or "") != (base.hostname or "").lower() or (target_port or 443) != (base_port or 443):
        return False
    prefix = base.path.rstrip("/")
    if not any(target.path.startswith(f"{prefix}/{version}/") for version in ("v1.0", "beta")):
        return False
    segments = target.path.lower().replace("%2e", ".").split("/")
    return not any(segment in (".", "..") for segment in segments)


def _json_body(response: httpx.Response) -> Any:
    """The parsed JSON body of a 2xx Graph answer.

    Raises:
        FatalError: the body is not JSON (an HTML error page of a proxy, a truncated answer).
    """
    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError:
        content_type = response.headers.get("Content-Type", "?").split(";")[0][:60]
        msg = f"Graph answered HTTP {response.status_code} with a body that is not JSON ({content_type})"
        raise FatalError(msg, status=response.status_code, code="non_json_body") from None


def raise_for_graph(response: httpx.Response, *, permission: str) -> None:
    """Map a non-2xx Graph response to the error taxonomy (the only place that does).

    Raises:
        FatalError: a 3xx (redirects are not followed: the token stays with Graph).
        PermissionMissingError: 403 (the call's declared ``permission`` is not granted).
        CursorExpiredError: 410 Gone, or ``syncStateNotFound`` / ``resyncRequired``.
        NotFoundError: 404.
        RetriableError: 429/5xx left after the retry layer gave up.
        FatalError: any other 4xx.
    """
    status = response.status_code
    if 300 <= status < 400:
        raise FatalError(f"Graph answered a redirect (HTTP {status}); not followed", status=status, code="redirect")
    if status < 400:
        return
    code = ""
    message = ""
    try:
        error = orjson.loads(response.content).get("error", {})
        code = str(error.get("code", ""))
        message = str(error.get("message", ""))[:300]
    except (orjson.JSONDecodeError, AttributeError):
        pass
    _raise_for_status(status, code, message, response.headers.get("Retry-After"), permission=permission)


def raise_for_sdk_error(exc: Exception, *, permission: str) -> None:
    """Map an msgraph-sdk / kiota failure to the taxonomy with the same rules as :func:`raise_for_graph`.

    The SDK raises ``ODataError`` (a kiota ``APIError``) for non-2xx answers and lets transport errors through.

    Raises:
        the error :func:`raise_for_graph` raises for the same status; RetriableError for a transport failure;
        ``exc`` itself when it is neither.
    """
    from kiota_abstractions.api_error import APIError

    if isinstance(exc, httpx.HTTPError):
        raise RetriableError(f"Graph unreachable: {type(exc).__name__}") from None
    if not isinstance(exc, APIError) or exc.response_status_code is None:
        raise exc
    main = getattr(exc, "error", None)  # ODataError.error: MainError(code, message)
    code = str(getattr(main, "code", "") or "")
    message = str(getattr(main, "message", "") or "")[:300]
    headers = {k.lower(): v for k, v in (exc.response_headers or {}).items()}
    retry_after = headers.get("retry-after")
    _raise_for_status(
        exc.response_status_code,
        code,
        message,
        retry_after if isinstance(retry_after, str) else None,
        permission=permission,
    )
    raise exc  # a 2xx/3xx APIError: not ours to reinterpret


def _raise_for_status(status: int, code: str, message: str, retry_after: str | None, *, permission: str) -> None:
    if status < 400:
        return
    if status == 410 or code in _RESYNC_CODES:
        raise CursorExpiredError(f"delta token no longer valid ({status} {code})", status=status, code=code)
    if status == 403:
        raise PermissionMissingError(f"Graph denied the call: {code}", permission=permission)
    if status == 404:
        raise NotFoundError(f"Graph object not found: {code}", status=404, code=code)
    if status == 429 or status >= 500:
        raise RetriableError(
            f"Graph unavailable after retries ({status} {code})",
            status=status,
            retry_after=float(retry_after) if retry_after and retry_after.replace(".", "", 1).isdigit() else None,
        )
    raise FatalError(f"Graph rejected the request ({status} {code}): {message}", status=status, code=code)


class SharedPool(httpx.AsyncBaseTransport):
    """One HTTPS connection pool for every :class:`GraphClient` of a process.

    A poll builds its own GraphClient (its meter, pacer lane and retry layer), but a pool per client costs an SSL
    context (the CA bundle loaded) and a TLS handshake with Graph for every poll, for two quiet requests
    (bench/notes/issue9.md, "Fleet profile"). Clients share the pool's kept-alive connections instead;
    only the bearer token differs per request, and it is set per request. A client's ``aclose`` leaves the pool
    open; its owner (the process's Container) closes it with :meth:`close`.
    """

    def __init__(self, inner: httpx.AsyncBaseTransport | None = None) -> None:
        self._inner = inner or httpx.AsyncHTTPTransport(retries=0)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send on one of the pool's connections."""
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        """Nothing: other clients still use the pool (see :meth:`close`)."""

    async def close(self) -> None:
        """Close the pool's connections (the owner, at the end of the process)."""
        await self._inner.aclose()


@dataclass(frozen=True)
class BatchItem:
    """One request of a ``$batch`` (relative URL, GET only for our use)."""

    id: str
    url: str
    headers: Mapping[str, str] | None = None


class GraphClient:
    """Graph for one customer tenant. Not thread-safe; one per tenant per invocation or cached per process."""

    def __init__(
        self,
        *,
        tenant_id: str,
        credentials: TenantCredentials,
        base_url: str,
        max_retries: int,
        meter: UsageMeter | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        pacer: GraphPacer | None = None,
        scope: str = GRAPH_SCOPE,
    ) -> None:
        """``transport``: the connection pool below the pacer and retry layers (a :class:`SharedPool` to reuse
        connections across clients); a pool of its own, closed with the client, when omitted."""
        self.tenant_id = tenant_id
        self._scope = scope
        self.meter = meter or UsageMeter()
        self._credentials = credentials
        self._root = base_url.rstrip("/")
        self._v1 = f"{self._root}/v1.0"
        pool = transport or httpx.AsyncHTTPTransport(retries=0)
        # Below the retry layer: every attempt waits for the budget (shared_code/adapters/pacer.py).
        retry = RetryTransport(
            PacedTransport(pool, pacer, tenant_id) if pacer is not None else pool,
            max_retries=max_retries,
            meter_for=lambda request: self.meter,
        )
        self._http = graph_http_client(retry)
        self._sdk: GraphServiceClient | None = None

    @property
    def sdk(self) -> GraphServiceClient:
        """A msgraph-sdk client sharing this tenant's transport, retry layer and meter (imported lazily)."""
        if self._sdk is None:
            from kiota_authentication_azure.azure_identity_authentication_provider import (
                AzureIdentityAuthenticationProvider,
            )
            from msgraph import GraphRequestAdapter, GraphServiceClient

            credential = self._credentials.credential_for(self.tenant_id)
            if credential is None:
                msg = "call GraphClient.ensure_token() before using the SDK client"
                raise RuntimeError(msg)
            provider = AzureIdentityAuthenticationProvider(
                credential, scopes=[self._scope], allowed_hosts=[urlsplit(self._root).hostname or ""]
            )
            adapter = GraphRequestAdapter(provider, client=self._http)
            adapter.base_url = self._v1
            self._sdk = GraphServiceClient(request_adapter=adapter)
        return self._sdk

    async def typed(self, request: Callable[[GraphServiceClient], Awaitable[T]], *, permission: str) -> T:
        """Run one msgraph-sdk request (typed request builders and models) on this client's transport.

        For low-volume calls (docs/architecture.md, "msgraph-sdk"): the SDK shares this client's httpx transport,
        RetryTransport (the one retry layer), meter and token host pinning; errors are mapped like the raw path's.

        A 401 drops the cached token and the SDK client and tries once more, as the raw path does (keys rolled,
        consent changed); a second 401 is mapped like any other status.

        Raises:
            see :func:`raise_for_sdk_error` and TenantCredentials.get_token.
        """
        for attempt in (1, 2):
            await self.ensure_token()
            try:
                return await request(self.sdk)
            except Exception as exc:
                if attempt == 1 and getattr(exc, "response_status_code", None) == 401:
                    await self._credentials.forget(self.tenant_id)
                    self._sdk = None  # its auth provider holds the forgotten credential
                    continue
                raise_for_sdk_error(exc, permission=permission)
                raise
        raise AssertionError("unreachable: the second attempt returns or raises")

    async def ensure_token(self) -> None:
        """Acquire (and cache) a Graph token now, so consent problems surface before any data call.

        Raises:
            ConsentRequiredError, RetriableError: see TenantCredentials.get_token.
        """
        await self._credentials.get_token(self.tenant_id, self._scope)

    def url(self, path: str, params: Mapping[str, str] | None = None) -> str:
        """Absolute v1.0 URL for ``path`` with OData params (``$`` kept literal as Graph expects)."""
        query = "&".join(f"{quote(k, safe='$')}={quote(v, safe=_ODATA_SAFE)}" for k, v in (params or {}).items())
        return f"{self._v1}{path}" + (f"?{query}" if query else "")

    async def get_json(
        self,
        path_or_url: str,
        *,
        permission: str,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        documented_ru: int = 1,
    ) -> dict[str, Any]:
        """GET one Graph resource or page and parse it.

        Raises:
            see :func:`raise_for_graph` and TenantCredentials.get_token.
        """
        absolute = "://" in path_or_url.split("?", 1)[0]
        url = path_or_url if absolute else self.url(path_or_url, params)
        response = await self._send("GET", url, headers=headers, documented_ru=documented_ru)
        raise_for_graph(response, permission=permission)
        result: dict[str, Any] = _json_body(response)
        return result

    async def pages(
        self,
        path_or_url: str,
        *,
        permission: str,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        documented_ru: int = 1,
    ) -> AsyncIterator[dict[str, Any]]:
        """Yield each page of a collection, following ``@odata.nextLink`` unchanged.

        Headers (e.g. ``ConsistencyLevel``) are re-sent on every page because Graph does not carry them over
        (reference/graph.md §5). The last page of a delta round carries ``@odata.deltaLink``.

        Raises:
            FatalError: the service repeated a nextLink (a paging loop).
        """
        url: str | None = path_or_url
        seen: set[str] = set()
        first = True
        while url is not None:
            page = await self.get_json(
                url,
                permission=permission,
                params=params if first else None,
                headers=headers,
                documented_ru=documented_ru,
            )
            first = False
            self.meter.pages += 1
            yield page
            next_link = page.get("@odata.nextLink")
            if next_link is not None:
                if next_link in seen:
                    msg = f"Graph repeated a nextLink: paging loop on {path_or_url}"
                    raise FatalError(msg)
                seen.add(next_link)
            url = next_link

    async def batch(self, items: list[BatchItem], *, permission: str) -> dict[str, dict[str, Any]]:
        """POST ``/$batch`` (≤ 20 items, relative URLs) and return responses by id.

        Inner 429s are not retried by any middleware (reference/graph.md §3); callers re-batch them.

        Raises:
            ValueError: more than 20 items.
            see :func:`raise_for_graph` for the outer response.
        """
        if len(items) > 20:
            msg = "a Graph $batch holds at most 20 requests"
            raise ValueError(msg)
        requests: list[dict[str, Any]] = []
        for item in items:
            entry: dict[str, Any] = {"id": item.id, "method": "GET", "url": item.url}
            if item.headers:
                entry["headers"] = dict(item.headers)
            requests.append(entry)
        body = {"requests": requests}
        # The envelope itself is not priced: each inner request is charged (and throttled) individually
        # (reference/graph.md §3), and their x-ms-resource-unit headers are added below.
        response = await self._send("POST", f"{self._v1}/$batch", json_body=body, documented_ru=0)
        raise_for_graph(response, permission=permission)
        parsed = _json_body(response)
        results: dict[str, dict[str, Any]] = {}
        for inner in parsed.get("responses", []):
            results[str(inner.get("id"))] = inner
            ru = (inner.get("headers") or {}).get("x-ms-resource-unit")
            if ru is not None and str(ru).isdigit():
                self.meter.resource_units += int(ru)
            if inner.get("status") == 429:
                self.meter.throttled += 1
        return results

    async def _send(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        json_body: Any = None,
        documented_ru: int = 1,
    ) -> httpx.Response:
        response = await self._send_once(method, url, headers=headers, json_body=json_body, documented_ru=documented_ru)
        if response.status_code == 401:
            # Graph rejected a token azure-identity still considers valid (keys rolled, consent changed): get a
            # fresh one and try once more; a second 401 is mapped by raise_for_graph.
            await self._credentials.forget(self.tenant_id)
            response = await self._send_once(
                method, url, headers=headers, json_body=json_body, documented_ru=documented_ru
            )
        return response

    async def _send_once(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None,
        json_body: Any,
        documented_ru: int,
    ) -> httpx.Response:
        # The one place the token is attached, so the one place it is checked (see the module docstring).
        if not graph_url_allowed(url, self._root):
            raise GraphUrlRejectedError(
                f"refused to send the Graph token to a URL outside {self._root}/v1.0|beta", code="foreign_url"
            )
        token = await self._credentials.get_token(self.tenant_id, self._scope)
        request_headers = {
            "Authorization": f"Bearer {token}",
            "Accept": "application/json",
            # A new GUID per request, as Graph's best practices ask (reference/graph.md §2).
            "client-request-id": str(uuid.uuid4()),
            **(headers or {}),
        }
        content = orjson.dumps(json_body) if json_body is not None else None
        if content is not None:
            request_headers["Content-Type"] = "application/json"
        request = self._http.build_request(
            method, url, headers=request_headers, content=content, extensions={"documented_ru": documented_ru}
        )
        try:
            return await self._http.send(request)
        except httpx.HTTPError as exc:
            raise RetriableError(f"Graph unreachable: {type(exc).__name__}") from None

    async def aclose(self) -> None:
        """Close the HTTP pool."""
        await self._http.aclose()


def graph_http_client(transport: httpx.AsyncBaseTransport) -> httpx.AsyncClient:
    """httpx client with msgraph-core's middleware chain (for SDK requests only, see the module docstring) minus
    kiota's RetryHandler (we retry in the transport) and RedirectHandler (a redirect would carry the token to
    wherever ``Location`` points; Graph does not redirect the calls we make)."""
    from kiota_http.kiota_client_factory import KiotaClientFactory
    from kiota_http.middleware import RedirectHandler, RetryHandler
    from msgraph_core import GraphClientFactory

    client = httpx.AsyncClient(
        transport=transport,
        timeout=httpx.Timeout(60.0, connect=10.0),
        # trust_env keeps SSL_CERT_FILE / proxies working (the simulator's CA locally).
        trust_env=True,
    )
    middleware = [
        m for m in KiotaClientFactory.get_default_middleware(None) if not isinstance(m, RetryHandler | RedirectHandler)
    ]
    wrapped: httpx.AsyncClient = GraphClientFactory.create_with_custom_middleware(middleware=middleware, client=client)
    return wrapped

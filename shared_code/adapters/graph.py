"""Microsoft Graph adapter: one client per customer tenant, real msgraph-sdk middleware, raw JSON for bulk reads.

Why raw JSON for bulk: msgraph-sdk model deserialization costs ~7 ms per object (reference/azure.md §4); 180k devices
would take ~20 CPU minutes. So bulk lists go through the same httpx client and middleware as the SDK (one retry
layer, see http_retry.py) but are parsed with orjson. Small calls may use :attr:`GraphClient.sdk` (typed models).

Errors are mapped from status to the taxonomy in exactly one place, :func:`raise_for_graph`.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import httpx
import orjson

from shared_code.adapters.credentials import TenantCredentials
from shared_code.adapters.http_retry import RetryTransport, UsageMeter
from shared_code.errors import (
    CursorExpiredError,
    FatalError,
    NotFoundError,
    PermissionMissingError,
    RetriableError,
)

if TYPE_CHECKING:
    from msgraph import GraphServiceClient

GRAPH_SCOPE = "https://graph.microsoft.com/.default"
# Graph's documented delta-resync signals (reference/graph.md §4).
_RESYNC_CODES = frozenset({"syncStateNotFound", "resyncRequired", "syncStateInvalid"})
# Characters left unescaped in OData query values so URLs stay readable in logs ($filter=displayName eq 'x').
_ODATA_SAFE = "$,'()/:@"


def raise_for_graph(response: httpx.Response, *, permission: str) -> None:
    """Map a non-2xx Graph response to the error taxonomy (the only place that does).

    Raises:
        PermissionMissingError: 403 (the call's declared ``permission`` is not granted).
        CursorExpiredError: 410 Gone, or ``syncStateNotFound`` / ``resyncRequired``.
        NotFoundError: 404.
        RetriableError: 429/5xx left after the retry layer gave up.
        FatalError: any other 4xx.
    """
    status = response.status_code
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
    if status == 410 or code in _RESYNC_CODES:
        raise CursorExpiredError(f"delta token no longer valid ({status} {code})", status=status, code=code)
    if status == 403:
        raise PermissionMissingError(f"Graph denied the call: {code}", permission=permission)
    if status == 404:
        raise NotFoundError(f"Graph object not found: {code}", status=404, code=code)
    if status == 429 or status >= 500:
        retry_after = response.headers.get("Retry-After")
        raise RetriableError(
            f"Graph unavailable after retries ({status} {code})",
            status=status,
            retry_after=float(retry_after) if retry_after and retry_after.replace(".", "", 1).isdigit() else None,
        )
    raise FatalError(f"Graph rejected the request ({status} {code}): {message}", status=status, code=code)


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
    ) -> None:
        self.tenant_id = tenant_id
        self.meter = meter or UsageMeter()
        self._credentials = credentials
        self._root = base_url.rstrip("/")
        self._v1 = f"{self._root}/v1.0"
        retry = RetryTransport(
            transport or httpx.AsyncHTTPTransport(retries=0),
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
                credential, scopes=[GRAPH_SCOPE], allowed_hosts=[urlsplit(self._root).hostname or ""]
            )
            adapter = GraphRequestAdapter(provider, client=self._http)
            adapter.base_url = self._v1
            self._sdk = GraphServiceClient(request_adapter=adapter)
        return self._sdk

    async def ensure_token(self) -> None:
        """Acquire (and cache) a Graph token now, so consent problems surface before any data call.

        Raises:
            ConsentRequiredError, RetriableError: see TenantCredentials.get_token.
        """
        await self._credentials.get_token(self.tenant_id, GRAPH_SCOPE)

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
        url = path_or_url if path_or_url.startswith("https://") else self.url(path_or_url, params)
        response = await self._send("GET", url, headers=headers, documented_ru=documented_ru)
        raise_for_graph(response, permission=permission)
        result: dict[str, Any] = orjson.loads(response.content)
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
        parsed = orjson.loads(response.content)
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
        token = await self._credentials.get_token(self.tenant_id, GRAPH_SCOPE)
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
    """httpx client with msgraph-core's middleware chain minus kiota's RetryHandler (we retry in the transport)."""
    from kiota_http.kiota_client_factory import KiotaClientFactory
    from kiota_http.middleware import RetryHandler
    from msgraph_core import GraphClientFactory

    client = httpx.AsyncClient(
        transport=transport,
        timeout=httpx.Timeout(60.0, connect=10.0),
        # trust_env keeps SSL_CERT_FILE / proxies working (the simulator's CA locally).
        trust_env=True,
    )
    middleware = [m for m in KiotaClientFactory.get_default_middleware(None) if not isinstance(m, RetryHandler)]
    wrapped: httpx.AsyncClient = GraphClientFactory.create_with_custom_middleware(middleware=middleware, client=client)
    return wrapped

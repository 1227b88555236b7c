"""Microsoft Graph v1.0 routes of the simulator: directory reads, delta, $expand, $batch, permissions.

Everything is served from ``directory.World``. One synchronous ``execute()`` answers a single Graph request (used by
the HTTP handler and by ``$batch`` for each inner request). Each rule names its public source in a comment; graph.md
is the project's summary of those sources.
"""

from __future__ import annotations

import base64
import bisect
import hashlib
import hmac
import os
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode

import orjson
from aiohttp import web

from simulator import pricing
from simulator.directory import (
    INTUNE_APP_ID,
    ODATA_TYPES,
    Collection,
    Device,
    DirectoryError,
    Group,
    JournalEntry,
    Tenant,
    User,
    World,
)

try:  # the core helper's shared app keys (simulator/auth.py); absent in isolated unit tests
    from simulator.auth import CLOCK as _CLOCK_KEY
    from simulator.auth import FAULTS as _FAULTS_KEY
    from simulator.auth import THROTTLE as _THROTTLE_KEY
    from simulator.auth import WORLD as _WORLD_KEY
except ImportError:  # pragma: no cover
    _CLOCK_KEY = _FAULTS_KEY = _THROTTLE_KEY = _WORLD_KEY = None  # type: ignore[assignment]

GRAPH_CT = "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8"
MAX_TOP = 999            # $top max for directory lists (https://learn.microsoft.com/graph/api/user-list)
DEFAULT_TOP = 100        # default page size (same page; graph.md §5)
EXPAND_PAGE_MAX = 100    # list + $expand → ≤ 100 per page (Graph known issue 13635; graph.md §6)
EXPAND_ITEMS_MAX = 20    # expanded relationship → ≤ 20 objects, no nextLink (graph.md §6, known-issues)
BATCH_MAX = 20           # https://learn.microsoft.com/graph/json-batching
DELTA_TTL = 7 * 86400    # directory delta tokens live 7 days (devblogs duration-of-change-tracking-tokens; graph.md §4)
DELTA_ID_FILTER_MAX = 50  # delta $filter=id eq … OR-ed, max 50 ids (group-delta.md, user-delta.md)

# --------------------------------------------------------------------------------------------------------------
# Permissions: one table. Each row: route family → (application roles, delegated scopes) accepted, least privileged
# first, then higher privileged ones the docs list. None = that token type is not supported for the route.
# --------------------------------------------------------------------------------------------------------------
_DIR_R = ("Directory.Read.All", "Directory.ReadWrite.All")
PERMISSIONS: dict[str, tuple[tuple[str, ...] | None, tuple[str, ...] | None, str]] = {
    # https://learn.microsoft.com/graph/api/user-get (GET /me: delegated only)
    "me": (None, ("User.Read", "User.ReadWrite", "User.ReadBasic.All", "User.Read.All", "User.ReadWrite.All",
                  *_DIR_R), "user-get"),
    # https://learn.microsoft.com/graph/api/user-list-memberof, /user-list-transitivememberof (signed-in user):
    # User.Read is enough; higher: Directory.Read.All, Group.Read.All, GroupMember.Read.All, User.Read.All.
    "me.memberOf": (None, ("User.Read", *_DIR_R, "Group.Read.All", "GroupMember.Read.All", "User.Read.All"),
                    "user-list-memberof"),
    # https://learn.microsoft.com/graph/api/directoryobject-checkmembergroups and -getmemberobjects
    # ("Memberships for the signed-in user": User.Read; higher User.Read.All, Directory.Read.All, …).
    "me.actions": (None, ("User.Read", "User.Read.All", "User.ReadWrite.All", *_DIR_R),
                   "directoryobject-checkmembergroups"),
    # https://learn.microsoft.com/graph/api/user-list and user-get
    "users.read": (("User.Read.All", "User.ReadWrite.All", *_DIR_R),
                   ("User.ReadBasic.All", "User.Read.All", "User.ReadWrite.All", *_DIR_R), "user-list"),
    # https://learn.microsoft.com/graph/api/user-delta
    "users.delta": (("User.Read.All", "User.ReadWrite.All", *_DIR_R),
                    ("User.Read", "User.ReadBasic.All", "User.Read.All", "User.ReadWrite.All", *_DIR_R),
                    "user-delta"),
    # https://learn.microsoft.com/graph/api/user-list-owneddevices: delegated User.Read (self) … ; the page lists
    # Application as "Not supported" but app User.Read.All / Directory.Read.All works in practice (graph.md §6, seed).
    "users.ownedDevices": (("User.Read.All", "User.ReadWrite.All", *_DIR_R),
                           ("User.Read", "User.Read.All", "User.ReadWrite.All", *_DIR_R), "user-list-owneddevices"),
    # https://learn.microsoft.com/graph/api/user-list-transitivememberof (another user's memberships)
    "users.memberOf": (("User.Read.All", "GroupMember.Read.All", "Group.Read.All", *_DIR_R),
                       ("User.Read.All", "GroupMember.Read.All", "Group.Read.All", *_DIR_R),
                       "user-list-transitivememberof"),
    # https://learn.microsoft.com/graph/api/group-list, group-get, group-delta, group-list-members,
    # group-list-transitivemembers: GroupMember.Read.All least; Group.Read.All, Directory.Read.All higher.
    "groups.read": (("GroupMember.Read.All", "Group.Read.All", "GroupMember.ReadWrite.All", "Group.ReadWrite.All",
                     *_DIR_R),
                    ("GroupMember.Read.All", "Group.Read.All", "GroupMember.ReadWrite.All", "Group.ReadWrite.All",
                     *_DIR_R), "group-list"),
    # https://learn.microsoft.com/graph/api/device-list, device-get, device-delta, device-list-registeredowners
    "devices.read": (("Device.Read.All", "Device.ReadWrite.All", *_DIR_R), ("Device.Read.All", *_DIR_R),
                     "device-list"),
    # https://learn.microsoft.com/graph/api/serviceprincipal-list, serviceprincipal-get
    "sp.read": (("Application.Read.All", "Application.ReadWrite.All", *_DIR_R),
                ("Application.Read.All", "Application.ReadWrite.All", *_DIR_R), "serviceprincipal-list"),
    # No v1.0 page for servicePrincipal endpoints: Application.Read.All (Lookout) or ServicePrincipalEndpoint.Read.All
    # (Portnox) per intune.md §1; Directory.Read.All also reads every servicePrincipal property.
    "sp.endpoints": (("Application.Read.All", "ServicePrincipalEndpoint.Read.All",
                      "ServicePrincipalEndpoint.ReadWrite.All", "Application.ReadWrite.All", *_DIR_R),
                     ("Application.Read.All", "ServicePrincipalEndpoint.Read.All", *_DIR_R), "intune.md §1"),
    # https://learn.microsoft.com/graph/api/intune-mam-managedappregistration-list
    "mam.read": (("DeviceManagementApps.Read.All", "DeviceManagementApps.ReadWrite.All"),
                 ("DeviceManagementApps.Read.All", "DeviceManagementApps.ReadWrite.All"),
                 "intune-mam-managedappregistration-list"),
}

# Which permissions let a caller see full properties of a member object of each type. Without one, Graph returns
# the object "with limited information": only @odata.type and id, other properties null
# (https://learn.microsoft.com/graph/permissions-overview#limited-information-returned-for-inaccessible-member-objects).
TYPE_READ: dict[str, frozenset[str]] = {
    "user": frozenset({"User.ReadBasic.All", "User.Read.All", "User.ReadWrite.All", *_DIR_R}),
    "group": frozenset({"GroupMember.Read.All", "Group.Read.All", "GroupMember.ReadWrite.All",
                        "Group.ReadWrite.All", *_DIR_R}),
    "device": frozenset({"Device.Read.All", "Device.ReadWrite.All", *_DIR_R}),
    "servicePrincipal": frozenset({"Application.Read.All", "Application.ReadWrite.All", *_DIR_R}),
    "orgContact": frozenset({"OrgContact.Read.All", *_DIR_R}),
}

# Known properties per type ($select validation) and filterable ones (resources/*.md "Supports $filter").
PROPS = {
    "user": ("id", "userPrincipalName", "displayName", "accountEnabled", "mail"),
    "group": ("id", "displayName", "securityEnabled", "mailEnabled", "groupTypes"),
    "device": ("id", "deviceId", "displayName", "operatingSystem", "operatingSystemVersion", "trustType",
               "isManaged", "isCompliant", "accountEnabled", "approximateLastSignInDateTime"),
    "servicePrincipal": ("id", "appId", "displayName", "servicePrincipalType", "accountEnabled"),
    "orgContact": ("id", "displayName", "mail"),
}
# Navigation properties Graph allows in $expand per type (user/device/group resource pages).
EXPANDABLE = {"user": ("ownedDevices", "registeredDevices", "memberOf"),
              "device": ("registeredOwners", "registeredUsers", "memberOf"),
              "group": ("members", "memberOf")}
_SYSTEM_OPTIONS = {"$select", "$filter", "$top", "$skiptoken", "$count", "$expand", "$orderby", "$search", "$skip",
                   "$deltatoken", "$format"}


# --------------------------------------------------------------------------------------------------------------
# Errors and results
# --------------------------------------------------------------------------------------------------------------


class GraphError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


def _bad(message: str, code: str = "BadRequest") -> GraphError:
    return GraphError(400, code, message)


def _unsupported(message: str) -> GraphError:
    # Advanced-query violations answer 400 Request_UnsupportedQuery (https://learn.microsoft.com/graph/aad-advanced-queries).
    return GraphError(400, "Request_UnsupportedQuery", message)


def _not_found(key: str) -> GraphError:
    return GraphError(404, "Request_ResourceNotFound",
                      f"Resource '{key}' does not exist or one of its queried reference-property objects are not "
                      "present.")


@dataclass
class Result:
    status: int
    body: Any = None          # dict → JSON; str → text/plain; None → empty
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Ctx:
    world: World
    tenant: Tenant
    principal: Any
    base: str                 # scheme://host:port the client used (nextLinks are absolute on the same base)
    now: float
    request: web.Request | None = None
    inner: bool = False       # inside $batch

    @property
    def delegated(self) -> bool:
        return bool(getattr(self.principal, "user_id", None))

    @property
    def granted(self) -> frozenset[str]:
        p = self.principal
        return frozenset(p.scopes) if self.delegated else frozenset(p.roles)


def _now(app: Mapping[Any, Any] | None) -> float:
    clock = None
    if app is not None:
        clock = (app.get(_CLOCK_KEY) if _CLOCK_KEY is not None else None) or app.get("clock")
    return float(clock.now()) if clock is not None else time.time()


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")


def error_body(err: GraphError, request_id: str, client_request_id: str, now: float) -> dict[str, Any]:
    # Graph error shape (https://learn.microsoft.com/graph/errors).
    return {"error": {"code": err.code, "message": err.message,
                      "innerError": {"date": _iso(now), "request-id": request_id,
                                     "client-request-id": client_request_id}}}


# --------------------------------------------------------------------------------------------------------------
# Query parsing
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Query:
    opts: dict[str, str]
    eventual: bool            # ConsistencyLevel: eventual
    raw: str = ""

    def get(self, name: str) -> str | None:
        return self.opts.get(name)

    def __contains__(self, name: str) -> bool:
        return name in self.opts

    @property
    def count(self) -> bool:
        return (self.opts.get("$count") or "").lower() == "true"

    @property
    def advanced(self) -> bool:
        # Advanced queries need ConsistencyLevel: eventual plus $count=true (graph.md §6).
        return self.eventual and self.count


def parse_query(raw: str, headers: Mapping[str, str]) -> Query:
    opts: dict[str, str] = {}
    for k, v in parse_qsl(raw, keep_blank_values=True):
        key = k.strip()
        if not key.startswith("$"):
            continue  # Graph ignores custom (non-$) query parameters
        low = key.lower()
        if low not in _SYSTEM_OPTIONS:
            # Unknown system query option (https://learn.microsoft.com/graph/query-parameters).
            raise _bad(f"Query option '{key}' is not allowed. To allow it, set the 'AllowedQueryOptions' property "
                       "on EnableQueryAttribute or QueryValidationSettings.")
        if low in opts:
            raise _bad(f"Query option '{key}' was specified more than once, but it must be specified at most once.")
        opts[low] = v
    cl = ""
    for hk, hv in headers.items():
        if hk.lower() == "consistencylevel":
            cl = hv
    return Query(opts, cl.strip().lower() == "eventual", raw)


def parse_select(q: Query, kind: str | None, extra: Iterable[str] = ()) -> list[str] | None:
    sel = q.get("$select")
    if sel is None:
        return None
    fields = [s.strip() for s in sel.split(",") if s.strip()]
    if not fields:
        raise _bad("Invalid $select: empty")
    if kind is not None:
        known = set(PROPS[kind]) | set(extra)
        for f in fields:
            if f not in known:
                raise _bad(f"Could not find a property named '{f}' on type 'microsoft.graph.{kind}'.")
    return fields


def parse_top(q: Query) -> int | None:
    top = q.get("$top")
    if top is None:
        return None
    try:
        n = int(top)
    except ValueError:
        raise _bad(f"Invalid page size specified: '{top}'. Must be between 1 and {MAX_TOP} inclusive.",
                   "Request_BadRequest") from None
    if not 1 <= n <= MAX_TOP:
        # $top max 999 for directory lists (https://learn.microsoft.com/graph/api/user-list).
        raise _bad(f"Invalid page size specified: '{top}'. Must be between 1 and {MAX_TOP} inclusive.",
                   "Request_BadRequest")
    return n


# ---- $filter: a small OData expression parser -------------------------------------------------------------------

_TOKEN = re.compile(r"\s*(?:(?P<str>'(?:[^']|'')*')|(?P<lp>\()|(?P<rp>\))|(?P<comma>,)|"
                    r"(?P<word>[A-Za-z_$][\w./$-]*)|(?P<num>-?\d+(?:\.\d+)?))")
_ADVANCED_OPS = {"ne", "not", "endswith"}


class _FilterParser:
    """Grammar: or-expr of and-expr of [not] (group | func(prop,lit) | prop op lit | prop in (lits))."""

    def __init__(self, text: str) -> None:
        self.toks: list[tuple[str, str]] = []
        pos = 0
        text = text.strip()
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if not m or m.end() == pos:
                raise _bad(f"Invalid filter clause: syntax error at position {pos} in '{text}'.")
            kind = m.lastgroup or ""
            self.toks.append((kind, m.group(kind)))
            pos = m.end()
            while pos < len(text) and text[pos].isspace():
                pos += 1
        self.i = 0
        self.props: set[str] = set()
        self.ops: set[str] = set()

    def peek(self) -> tuple[str, str] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, kind: str | None = None, word: str | None = None) -> tuple[str, str]:
        t = self.peek()
        if t is None or (kind and t[0] != kind) or (word and t[1].lower() != word):
            raise _bad("Invalid filter clause: unexpected "
                       f"{'end of input' if t is None else repr(t[1])}.")
        self.i += 1
        return t

    def parse(self) -> Callable[[dict[str, Any]], bool]:
        fn = self.or_expr()
        if self.peek() is not None:
            raise _bad(f"Invalid filter clause: unexpected {self.peek()[1]!r}.")  # type: ignore[index]
        return fn

    def or_expr(self) -> Callable[[dict[str, Any]], bool]:
        parts = [self.and_expr()]
        while (t := self.peek()) and t[0] == "word" and t[1].lower() == "or":
            self.i += 1
            parts.append(self.and_expr())
        return parts[0] if len(parts) == 1 else (lambda o: any(p(o) for p in parts))

    def and_expr(self) -> Callable[[dict[str, Any]], bool]:
        parts = [self.unary()]
        while (t := self.peek()) and t[0] == "word" and t[1].lower() == "and":
            self.i += 1
            parts.append(self.unary())
        return parts[0] if len(parts) == 1 else (lambda o: all(p(o) for p in parts))

    def unary(self) -> Callable[[dict[str, Any]], bool]:
        t = self.peek()
        if t and t[0] == "word" and t[1].lower() == "not":
            self.i += 1
            self.ops.add("not")
            inner = self.unary()
            return lambda o: not inner(o)
        return self.primary()

    def literal(self) -> Any:
        kind, val = self.take()
        if kind == "str":
            return val[1:-1].replace("''", "'")  # OData escapes ' as '' in string literals
        if kind == "num":
            return float(val) if "." in val else int(val)
        if kind == "word" and val.lower() in ("true", "false"):
            return val.lower() == "true"
        if kind == "word" and val.lower() == "null":
            return None
        if kind == "word" and re.fullmatch(r"[0-9a-fA-F-]{36}", val):
            return val
        raise _bad(f"Invalid filter clause: '{val}' is not a literal.")

    def primary(self) -> Callable[[dict[str, Any]], bool]:
        t = self.peek()
        if t is None:
            raise _bad("Invalid filter clause: unexpected end of input.")
        if t[0] == "lp":
            self.i += 1
            inner = self.or_expr()
            self.take("rp")
            return inner
        word = self.take("word")[1]
        low = word.lower()
        if low in ("startswith", "endswith") and self.peek() and self.peek()[0] == "lp":  # type: ignore[index]
            self.i += 1
            prop = self.take("word")[1]
            self.take("comma")
            lit = self.literal()
            self.take("rp")
            self.props.add(prop)
            self.ops.add(low)
            if not isinstance(lit, str):
                raise _bad(f"Invalid filter clause: {word} needs a string.")
            needle = lit.casefold()
            if low == "startswith":
                return lambda o: isinstance(o.get(prop), str) and o[prop].casefold().startswith(needle)
            return lambda o: isinstance(o.get(prop), str) and o[prop].casefold().endswith(needle)
        prop = word
        self.props.add(prop)
        op = self.take("word")[1].lower()
        self.ops.add(op)
        if op == "in":
            self.take("lp")
            vals = [self.literal()]
            while self.peek() and self.peek()[0] == "comma":  # type: ignore[index]
                self.i += 1
                vals.append(self.literal())
            self.take("rp")
            keys = {_fold(v) for v in vals}
            return lambda o: _fold(o.get(prop)) in keys
        if op not in ("eq", "ne", "ge", "le", "gt", "lt"):
            raise _bad(f"Invalid filter clause: unknown operator '{op}'.")
        lit = self.literal()
        key = _fold(lit)
        if op == "eq":
            return lambda o: _fold(o.get(prop)) == key
        if op == "ne":
            return lambda o: _fold(o.get(prop)) != key
        cmp: Callable[[Any, Any], bool] = {"ge": lambda a, b: a >= b, "le": lambda a, b: a <= b,
                                           "gt": lambda a, b: a > b, "lt": lambda a, b: a < b}[op]
        return lambda o: o.get(prop) is not None and key is not None and cmp(_fold(o.get(prop)), key)


def _fold(v: Any) -> Any:
    # Directory string comparisons are case-insensitive.
    return v.casefold() if isinstance(v, str) else v


@dataclass
class Filter:
    pred: Callable[[dict[str, Any]], bool]
    props: set[str]
    ops: set[str]
    id_values: list[str] | None = None  # set when the filter is only `id eq … or id eq …`


def parse_filter(q: Query, kind: str | None, *, allowed: Iterable[str] | None = None,
                 needs_advanced: bool = False) -> Filter | None:
    text = q.get("$filter")
    if text is None:
        return None
    p = _FilterParser(text)
    pred = p.parse()
    allowed_set = set(allowed if allowed is not None else (PROPS[kind] if kind else ()))
    for prop in p.props:
        if prop not in allowed_set:
            raise _unsupported(f"Unsupported or invalid query filter clause specified for property '{prop}' of "
                               f"resource '{kind or 'directoryObject'}'.")
    # ne / not / endsWith need advanced queries (ConsistencyLevel: eventual + $count=true; graph.md §6).
    if (p.ops & _ADVANCED_OPS or needs_advanced) and not q.advanced:
        raise _unsupported("Unsupported query. This query requires the ConsistencyLevel header set to 'eventual' "
                           "and $count=true (advanced query capabilities).")
    ids = None
    if p.props == {"id"} and p.ops <= {"eq"}:
        ids = re.findall(r"'((?:[^']|'')*)'", text)
    return Filter(pred, p.props, p.ops, ids)


# --------------------------------------------------------------------------------------------------------------
# Opaque tokens ($skiptoken, $deltatoken): HMAC-sealed JSON so clients cannot forge positions
# --------------------------------------------------------------------------------------------------------------


def _key(world: World) -> bytes:
    k = getattr(world, "_token_key", None)
    if k is None:
        k = os.urandom(32)
        world._token_key = k  # type: ignore[attr-defined]
    return k


def seal(world: World, payload: dict[str, Any]) -> str:
    raw = orjson.dumps(payload)
    mac = hmac.new(_key(world), raw, hashlib.sha256).digest()[:16]
    return base64.urlsafe_b64encode(mac + raw).decode().rstrip("=")


def unseal(world: World, token: str) -> dict[str, Any] | None:
    try:
        blob = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (ValueError, TypeError):
        return None
    mac, raw = blob[:16], blob[16:]
    if len(mac) < 16 or not hmac.compare_digest(mac, hmac.new(_key(world), raw, hashlib.sha256).digest()[:16]):
        return None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


# --------------------------------------------------------------------------------------------------------------
# Serialisation helpers
# --------------------------------------------------------------------------------------------------------------


def _readable(ctx: Ctx, kind: str, grant: Iterable[str] = ()) -> bool:
    return kind in grant or bool(ctx.granted & TYPE_READ.get(kind, frozenset()))


def render(ctx: Ctx, obj: Any, select: list[str] | None, *, typed: bool, grant: Iterable[str] = ()) -> dict[str, Any]:
    """Graph JSON of one directory object, projected by $select; limited info when the type is not readable."""
    kind = obj.kind
    props: dict[str, Any] = obj.props()
    if not _readable(ctx, kind, grant):
        keys = select if select is not None else list(props)
        out: dict[str, Any] = {"@odata.type": ODATA_TYPES[kind]}
        for k in keys:
            out[k] = obj.id if k == "id" else None
        out["id"] = obj.id
        return out
    if select is not None:
        props = {k: props[k] for k in select if k in props}
    if typed:
        return {"@odata.type": ODATA_TYPES[kind], **props}
    return props


def _context(ctx: Ctx, fragment: str) -> str:
    return f"{ctx.base}/v1.0/$metadata#{fragment}"


def _link(ctx: Ctx, path: str, params: dict[str, str]) -> str:
    return f"{ctx.base}/v1.0/{path.lstrip('/')}?" + urlencode(params, quote_via=quote, safe="$,'()")


# --------------------------------------------------------------------------------------------------------------
# Permission check
# --------------------------------------------------------------------------------------------------------------


def require(ctx: Ctx, family: str, *, self_only_scopes: Iterable[str] = (), target_user: str | None = None) -> None:
    app_perms, delegated_perms, _doc = PERMISSIONS[family]
    allowed = delegated_perms if ctx.delegated else app_perms
    if allowed is None:
        raise GraphError(403, "Authorization_RequestDenied", "Insufficient privileges to complete the operation.")
    have = ctx.granted & set(allowed)
    if not have:
        raise GraphError(403, "Authorization_RequestDenied", "Insufficient privileges to complete the operation.")
    # Delegated scopes that only reach the signed-in user's own object (e.g. User.Read).
    if ctx.delegated and have <= set(self_only_scopes) and target_user is not None \
            and target_user != ctx.principal.user_id:
        raise GraphError(403, "Authorization_RequestDenied", "Insufficient privileges to complete the operation.")


# --------------------------------------------------------------------------------------------------------------
# Collection paging
# --------------------------------------------------------------------------------------------------------------


@dataclass
class ListSpec:
    path: str                          # canonical path (for the token and nextLink)
    kind: str | None                   # typed collection kind, None = directoryObject collection
    items: list[Any] | Collection
    ctx_fragment: str
    select: list[str] | None = None
    filter: Filter | None = None
    expand: str | None = None
    expand_fn: Callable[[Any], list[Any]] | None = None
    grant: tuple[str, ...] = ()        # types readable through this route regardless of token (e.g. /me/memberOf)
    typed_items: bool = False          # include @odata.type per item (directoryObject collections)
    max_page: int = MAX_TOP


def list_page(ctx: Ctx, q: Query, spec: ListSpec, token: dict[str, Any] | None) -> Result:
    top = parse_top(q)
    size = top or DEFAULT_TOP
    if spec.expand:
        size = min(size, EXPAND_PAGE_MAX)  # ≤ 100 objects per page with $expand (graph.md §6)
    size = min(size, spec.max_page)
    items = spec.items
    if token is not None:
        if token.get("r") != spec.path:
            raise _bad("The $skiptoken does not belong to this request.", "Request_BadRequest")
        start = items.after(int(token.get("o", 0))) if isinstance(items, Collection) else int(token.get("i", 0))
    else:
        start = 0
    seq = items.items if isinstance(items, Collection) else items
    pred = spec.filter.pred if spec.filter else None
    out: list[dict[str, Any]] = []
    i = start
    n = len(seq)
    select = spec.select
    while i < n and len(out) < size:
        obj = seq[i]
        i += 1
        if pred is not None and not pred(obj.props()):
            continue
        row = render(ctx, obj, select, typed=spec.typed_items, grant=spec.grant)
        if spec.expand and spec.expand_fn is not None:
            related = spec.expand_fn(obj)[:EXPAND_ITEMS_MAX]  # at most 20, no nextLink for them
            row[spec.expand] = [render(ctx, r, None, typed=True) for r in related]
        out.append(row)
    body: dict[str, Any] = {"@odata.context": _context(ctx, spec.ctx_fragment)}
    if token is None and q.count and q.eventual:
        # @odata.count only with ConsistencyLevel: eventual, and only on the first page (graph.md §5-6).
        body["@odata.count"] = sum(1 for o in seq if pred is None or pred(o.props()))
    body["value"] = out
    if i < n:
        pos: dict[str, Any] = {"k": "list", "t": ctx.tenant.tenant_id, "r": spec.path, "iat": int(ctx.now)}
        if isinstance(items, Collection):
            pos["o"] = seq[i - 1].ord  # last scanned item: the next page starts after it
        else:
            pos["i"] = i
        params = {k: v for k, v in q.opts.items() if k != "$skiptoken"}
        params["$skiptoken"] = seal(ctx.world, pos)
        body["@odata.nextLink"] = _link(ctx, spec.path, params)
    return Result(200, body)


def count_result(ctx: Ctx, q: Query, seq: Iterable[Any], flt: Filter | None) -> Result:
    # The /$count segment needs ConsistencyLevel: eventual (graph.md §6: "a /$count segment errors" without it).
    if not q.eventual:
        raise _unsupported("Count is not supported for this request without ConsistencyLevel set to eventual.")
    n = sum(1 for o in seq if flt is None or flt.pred(o.props()))
    return Result(200, str(n), {"Content-Type": "text/plain;charset=utf-8"})


def _check_only(q: Query, allowed: set[str], what: str) -> None:
    for k in q.opts:
        if k not in allowed:
            raise _bad(f"Query option '{k}' is not supported for {what}.", "Request_UnsupportedQuery")


def parse_expand(q: Query, kind: str) -> str | None:
    exp = q.get("$expand")
    if exp is None:
        return None
    exp = exp.strip()
    if "(" in exp:
        # No nested $select/$filter inside $expand on directory objects (graph.md §6, known-issues).
        raise _unsupported("Nested query options in $expand are not supported for directory objects.")
    names = [e.strip() for e in exp.split(",") if e.strip()]
    if len(names) != 1:
        raise _unsupported("Only one navigation property can be expanded per request.")
    name = names[0]
    if name not in EXPANDABLE.get(kind, ()):
        raise _bad(f"Could not find a property named '{name}' on type 'microsoft.graph.{kind}'.")
    if q.eventual and q.count:
        # $expand is not supported with advanced queries (graph.md §6, aad-advanced-queries).
        raise _unsupported("$expand is not supported with advanced queries.")
    return name


# --------------------------------------------------------------------------------------------------------------
# Route handlers
# --------------------------------------------------------------------------------------------------------------


def _expand_fn(ctx: Ctx, kind: str, nav: str) -> Callable[[Any], list[Any]]:
    t = ctx.tenant
    if kind == "user" and nav in ("ownedDevices", "registeredDevices"):
        return lambda u: list(_owned(ctx, u.id))
    if kind == "device" and nav == "registeredOwners":
        return lambda d: ([t.users.by_id[d.owner]] if d.owner and d.owner in t.users.by_id
                          and t.owner_visible(d.id, ctx.now) else [])
    if kind == "device" and nav == "registeredUsers":
        return lambda d: [t.users.by_id[u] for u in d.registered_users if u in t.users.by_id]
    if kind == "group" and nav == "members":
        return lambda g: [o for o in (t.find(m) for m in _members_of(ctx, g, False)) if o is not None]
    # memberOf
    return lambda o: [t.groups.by_id[g] for g in _member_of_ids(ctx, o.id, False) if g in t.groups.by_id]


def _typed_list(ctx: Ctx, q: Query, token: dict[str, Any] | None, path: str, kind: str, coll: Collection,
                family: str, fragment: str, *, filterable: Iterable[str] | None = None) -> Result:
    require(ctx, family)
    if q.get("$skip") is not None:
        raise _bad("'$skip' is not supported by the service.", "Request_UnsupportedQuery")  # user-list: no $skip
    if q.get("$search") is not None:
        raise _unsupported("$search is not modelled by the simulator.")
    items: list[Any] | Collection = coll
    order = q.get("$orderby")
    if order is not None:
        # $orderby on displayName / userPrincipalName (user-list, group-list, device-list "Optional query
        # parameters"); $filter combined with $orderby needs advanced queries (graph.md §6).
        m = re.fullmatch(r"\s*(displayName|userPrincipalName)(?:\s+(asc|desc))?\s*", order)
        if m is None or m.group(1) not in PROPS[kind]:
            raise _unsupported(f"Sorting by '{order}' is not supported on {kind} by the simulator.")
        if q.get("$filter") is not None and not q.advanced:
            raise _unsupported("$filter with $orderby requires advanced query capabilities (ConsistencyLevel: "
                               "eventual and $count=true).")
        prop = m.group(1)
        items = sorted(coll.items, key=lambda o: str(o.props().get(prop) or "").casefold(),
                       reverse=m.group(2) == "desc")
    expand = parse_expand(q, kind)
    spec = ListSpec(path, kind, items, fragment, select=parse_select(q, kind),
                    filter=parse_filter(q, kind, allowed=filterable), expand=expand,
                    expand_fn=_expand_fn(ctx, kind, expand) if expand else None)
    return list_page(ctx, q, spec, token)


def _dirobj_list(ctx: Ctx, q: Query, token: dict[str, Any] | None, path: str, objs: list[Any], fragment: str,
                 *, cast: str | None, grant: tuple[str, ...] = (), advanced_filter: bool = True) -> Result:
    """A directoryObject collection (members, owners, memberOf …): @odata.type per item, casts, limited info."""
    if q.get("$search") is not None or q.get("$orderby") is not None:
        raise _unsupported("$search and $orderby are not modelled by the simulator on this collection.")
    if cast is not None:
        objs = [o for o in objs if o.kind == cast]
    kind = cast
    spec = ListSpec(path, kind, objs, fragment,
                    select=parse_select(q, kind) if kind else _loose_select(q),
                    filter=parse_filter(q, kind, allowed=PROPS[kind] if kind else ("id", "displayName"),
                                        needs_advanced=advanced_filter),
                    grant=grant, typed_items=True)
    if q.get("$expand") is not None:
        raise _unsupported("$expand is not supported on this collection by the simulator.")
    return list_page(ctx, q, spec, token)


def _loose_select(q: Query) -> list[str] | None:
    sel = q.get("$select")
    if sel is None:
        return None
    return [s.strip() for s in sel.split(",") if s.strip()]


_CASTS = {"microsoft.graph.user": "user", "microsoft.graph.group": "group", "microsoft.graph.device": "device",
          "microsoft.graph.orgcontact": "orgContact", "microsoft.graph.serviceprincipal": "servicePrincipal"}


def _parse_tail(rest: list[str]) -> tuple[str | None, bool]:
    """Parse an optional OData cast segment and /$count after a relationship."""
    cast = None
    count = False
    for seg in rest:
        low = seg.lower()
        if low in _CASTS:
            if cast is not None:
                raise _bad(f"Resource not found for the segment '{seg}'.")
            cast = _CASTS[low]
        elif low == "$count":
            count = True
        else:
            raise _bad(f"Resource not found for the segment '{seg}'.")
    return cast, count


def _key_in_parens(seg: str) -> tuple[str, str | None, str | None]:
    """``devices(deviceId='x')`` → ("devices", "deviceId", "x"); plain segment → (seg, None, None)."""
    m = re.fullmatch(r"(\w+)\((\w+)='((?:[^']|'')*)'\)", seg)
    if not m:
        return seg, None, None
    return m.group(1), m.group(2), m.group(3).replace("''", "'")


def _user_or_404(ctx: Ctx, key: str) -> User:
    u = ctx.tenant.user_by_key(key)
    if u is None or ctx.tenant.lagging(u.id, ctx.now):
        raise _not_found(key)  # also while a new user has not replicated yet (directory.Tenant.readable_at)
    return u


def _owned(ctx: Ctx, user_id: str) -> list[Device]:
    """A user's owned devices readable now (replication lag hides new devices and new owner links)."""
    t = ctx.tenant
    return [t.devices.by_id[d] for d in t.owned.get(user_id, ())
            if d in t.devices.by_id and not t.lagging(d, ctx.now) and t.owner_visible(d, ctx.now)]


def _member_of_ids(ctx: Ctx, obj_id: str, transitive: bool) -> list[str]:
    """Groups an object is a member of, directly or transitively, through memberships readable now."""
    t = ctx.tenant
    if not t.member_readable_at:
        return t.transitive_member_of(obj_id) if transitive else sorted(t.member_of.get(obj_id, ()))
    direct = sorted(g for g in t.member_of.get(obj_id, ()) if t.member_visible(g, obj_id, ctx.now))
    if not transitive:
        return direct
    seen: dict[str, None] = {}
    stack = list(direct)
    while stack:
        gid = stack.pop()
        if gid in seen or gid == obj_id:
            continue
        seen[gid] = None
        stack.extend(p for p in t.member_of.get(gid, ()) if t.member_visible(p, gid, ctx.now))
    return list(seen)


def _members_of(ctx: Ctx, group: Group, transitive: bool) -> list[str]:
    """A group's members, direct or nested, through memberships readable now."""
    t = ctx.tenant
    if not t.member_readable_at:
        return list(t.transitive_members(group.id)) if transitive else list(group.members)
    out: dict[str, None] = {}
    seen = {group.id}
    stack = [group.id]
    while stack:
        g = t.groups.get(stack.pop())
        if g is None:
            continue
        for mid, kind in g.members.items():
            if not t.member_visible(g.id, mid, ctx.now):
                continue
            if mid != group.id:
                out.setdefault(mid, None)
            if transitive and kind == "group" and mid not in seen:
                seen.add(mid)
                stack.append(mid)
    return list(out)


def _memberof_list(ctx: Ctx, q: Query, token: dict[str, Any] | None, path: str, obj_id: str, transitive: bool,
                   rest: list[str], grant: tuple[str, ...]) -> Result:
    t = ctx.tenant
    ids = _member_of_ids(ctx, obj_id, transitive)
    groups = [t.groups.by_id[g] for g in ids if g in t.groups.by_id]
    cast, count = _parse_tail(rest)
    if cast is not None and cast != "group":
        groups = []
    if cast is not None and not q.advanced:
        # OData casts on memberOf need ConsistencyLevel + $count (user-list-memberof "Optional query parameters").
        raise _unsupported("OData cast requires advanced query capabilities (ConsistencyLevel: eventual, $count).")
    if count:
        return count_result(ctx, q, groups, None)
    return _dirobj_list(ctx, q, token, path, groups, "directoryObjects", cast=None, grant=grant,
                        advanced_filter=True)


def _me(ctx: Ctx, method: str, segs: list[str], q: Query, token: dict[str, Any] | None, body: Any,
        path: str) -> Result:
    if not ctx.delegated:
        # /me needs a signed-in user (user-get: "Calling the /me endpoint requires a signed-in user").
        raise _bad("/me request is only valid with delegated authentication flow.")
    uid = ctx.principal.user_id
    user = ctx.tenant.users.get(uid)
    if user is None:
        raise _not_found(uid)
    rest = segs[1:]
    if not rest:
        require(ctx, "me")
        _check_only(q, {"$select", "$expand"}, "/me")
        return Result(200, {"@odata.context": _context(ctx, "users/$entity"),
                            **render(ctx, user, parse_select(q, "user"), typed=False, grant=("user",))})
    nav = rest[0]
    if method == "GET" and nav in ("memberOf", "transitiveMemberOf"):
        require(ctx, "me.memberOf")
        return _memberof_list(ctx, q, token, path, uid, nav == "transitiveMemberOf", rest[1:], ("group",))
    if method == "GET" and nav == "ownedDevices":
        require(ctx, "users.ownedDevices")
        return _owned_devices(ctx, q, token, path, user, rest[1:])
    if method == "POST" and nav in ("checkMemberGroups", "getMemberObjects", "getMemberGroups",
                                    "checkMemberObjects"):
        require(ctx, "me.actions")
        return _member_action(ctx, uid, nav, body)
    raise _bad(f"Resource not found for the segment '{nav}'.")


def _member_action(ctx: Ctx, obj_id: str, action: str, body: Any) -> Result:
    t = ctx.tenant
    groups = t.transitive_member_of(obj_id)
    if action in ("getMemberObjects", "getMemberGroups"):
        # Body: {"securityEnabledOnly": bool} (directoryobject-getmemberobjects).
        if not isinstance(body, dict) or not isinstance(body.get("securityEnabledOnly"), bool):
            raise _bad("Request body must be an object with boolean 'securityEnabledOnly'.")
        if body["securityEnabledOnly"]:
            groups = [g for g in groups if t.groups.by_id[g].security_enabled]
        return Result(200, {"@odata.context": _context(ctx, "Collection(Edm.String)"), "value": groups})
    key = "groupIds" if action == "checkMemberGroups" else "ids"
    ids = body.get(key) if isinstance(body, dict) else None
    if not isinstance(ids, list) or not all(isinstance(x, str) for x in ids):
        raise _bad(f"Request body must be an object with a string array '{key}'.")
    if len(ids) > 20:
        # checkMemberGroups: "up to 20 groups" per request (directoryobject-checkmembergroups).
        raise _bad("The number of group ids must not exceed 20.")
    gs = set(groups)
    return Result(200, {"@odata.context": _context(ctx, "Collection(Edm.String)"),
                        "value": [g for g in ids if g in gs]})


def _owned_devices(ctx: Ctx, q: Query, token: dict[str, Any] | None, path: str, user: User,
                   rest: list[str]) -> Result:
    devs = _owned(ctx, user.id)
    cast, count = _parse_tail(rest)
    if cast is not None and not q.advanced:
        raise _unsupported("OData cast requires advanced query capabilities (ConsistencyLevel: eventual, $count).")
    if count:
        return count_result(ctx, q, devs, None)
    return _dirobj_list(ctx, q, token, path, devs, "directoryObjects", cast=cast, advanced_filter=True)


def _users(ctx: Ctx, method: str, segs: list[str], q: Query, token: dict[str, Any] | None, body: Any,
           path: str) -> Result:
    t = ctx.tenant
    if method != "GET":
        raise GraphError(405, "Request_BadRequest", "The simulator's directory is read-only through Graph.")
    if len(segs) == 1:
        return _typed_list(ctx, q, token, path, "user", t.users, "users.read", "users")
    key = segs[1]
    if key == "delta" and len(segs) == 2:
        require(ctx, "users.delta")
        return delta(ctx, q, "users", path)
    if key == "$count" and len(segs) == 2:
        require(ctx, "users.read")
        return count_result(ctx, q, t.users, parse_filter(q, "user"))
    user = _user_or_404(ctx, key)
    if len(segs) == 2:
        if ctx.delegated and user.id == ctx.principal.user_id:
            require(ctx, "me")  # the signed-in user's own object: User.Read is enough (user-get)
        else:
            require(ctx, "users.read")
        _check_only(q, {"$select", "$expand"}, "a single user")
        expand = parse_expand(q, "user")
        row = render(ctx, user, parse_select(q, "user"), typed=False)
        if expand:
            row[expand] = [render(ctx, o, None, typed=True) for o in
                           _expand_fn(ctx, "user", expand)(user)[:EXPAND_ITEMS_MAX]]
        return Result(200, {"@odata.context": _context(ctx, "users/$entity"), **row})
    nav = segs[2]
    if nav in ("ownedDevices", "registeredDevices"):
        require(ctx, "users.ownedDevices", self_only_scopes=("User.Read",), target_user=user.id)
        return _owned_devices(ctx, q, token, path, user, segs[3:])
    if nav in ("memberOf", "transitiveMemberOf"):
        if ctx.delegated and user.id == ctx.principal.user_id:
            require(ctx, "me.memberOf")
            return _memberof_list(ctx, q, token, path, user.id, nav == "transitiveMemberOf", segs[3:], ("group",))
        require(ctx, "users.memberOf")
        return _memberof_list(ctx, q, token, path, user.id, nav == "transitiveMemberOf", segs[3:], ())
    if nav == "managedAppRegistrations":
        require(ctx, "mam.read")
        regs = [m for m in t.mam if m.user_id == user.id]
        return _mam_page(ctx, q, token, path, regs)
    raise _bad(f"Resource not found for the segment '{nav}'.")


def _groups(ctx: Ctx, method: str, segs: list[str], q: Query, token: dict[str, Any] | None, body: Any,
            path: str) -> Result:
    t = ctx.tenant
    if method != "GET":
        raise GraphError(405, "Request_BadRequest", "The simulator's directory is read-only through Graph.")
    require(ctx, "groups.read")
    if len(segs) == 1:
        return _typed_list(ctx, q, token, path, "group", t.groups, "groups.read", "groups")
    key = segs[1]
    if key == "delta" and len(segs) == 2:
        return delta(ctx, q, "groups", path)
    if key == "$count" and len(segs) == 2:
        return count_result(ctx, q, t.groups, parse_filter(q, "group"))
    g = t.groups.get(key)
    if g is None:
        raise _not_found(key)
    if len(segs) == 2:
        _check_only(q, {"$select", "$expand"}, "a single group")
        expand = parse_expand(q, "group")
        row = render(ctx, g, parse_select(q, "group"), typed=False)
        if expand:
            row[expand] = [render(ctx, o, None, typed=True) for o in
                           _expand_fn(ctx, "group", expand)(g)[:EXPAND_ITEMS_MAX]]
        return Result(200, {"@odata.context": _context(ctx, "groups/$entity"), **row})
    nav = segs[2]
    if nav in ("members", "transitiveMembers"):
        cast, count = _parse_tail(segs[3:])
        if nav == "transitiveMembers" and cast is not None and not q.advanced:
            # Casts on transitive lists need ConsistencyLevel: eventual + $count=true (graph.md §6).
            raise _unsupported("OData cast on transitiveMembers requires the ConsistencyLevel header set to "
                               "'eventual' and $count=true.")
        objs = [o for o in (t.find(m) for m in _members_of(ctx, g, nav == "transitiveMembers")) if o is not None]
        if nav == "members" and token is None and not count:
            objs = _member_glitch(ctx, objs)
        if count:
            return count_result(ctx, q, [o for o in objs if cast is None or o.kind == cast], None)
        return _dirobj_list(ctx, q, token, path, objs, "directoryObjects", cast=cast)
    if nav in ("memberOf", "transitiveMemberOf"):
        return _memberof_list(ctx, q, token, path, g.id, nav == "transitiveMemberOf", segs[3:], ())
    raise _bad(f"Resource not found for the segment '{nav}'.")


def _devices(ctx: Ctx, method: str, segs: list[str], q: Query, token: dict[str, Any] | None, body: Any,
             path: str) -> Result:
    t = ctx.tenant
    if method != "GET":
        raise GraphError(405, "Request_BadRequest", "The simulator's directory is read-only through Graph.")
    require(ctx, "devices.read")
    if len(segs) == 1:
        return _typed_list(ctx, q, token, path, "device", t.devices, "devices.read", "devices")
    key = segs[1]
    if key == "delta" and len(segs) == 2:
        return delta(ctx, q, "devices", path)
    if key == "$count" and len(segs) == 2:
        return count_result(ctx, q, t.devices, parse_filter(q, "device"))
    d = t.devices.get(key)
    if d is None or t.lagging(d.id, ctx.now):
        raise _not_found(key)  # also while a new device has not replicated yet (directory.Tenant.readable_at)
    return _device_item(ctx, q, token, path, d, segs[2:])


def _device_item(ctx: Ctx, q: Query, token: dict[str, Any] | None, path: str, d: Device, rest: list[str]) -> Result:
    t = ctx.tenant
    if not rest:
        _check_only(q, {"$select", "$expand"}, "a single device")
        expand = parse_expand(q, "device")
        row = render(ctx, d, parse_select(q, "device"), typed=False)
        if expand:
            row[expand] = [render(ctx, o, None, typed=True) for o in
                           _expand_fn(ctx, "device", expand)(d)[:EXPAND_ITEMS_MAX]]
        return Result(200, {"@odata.context": _context(ctx, "devices/$entity"), **row})
    nav = rest[0]
    if nav in ("registeredOwners", "registeredUsers"):
        ids = ([d.owner] if d.owner else []) if nav == "registeredOwners" else d.registered_users
        if not t.owner_visible(d.id, ctx.now):
            ids = []  # the owner link has not replicated yet
        objs = [t.users.by_id[u] for u in ids if u in t.users.by_id]
        cast, count = _parse_tail(rest[1:])
        if count:
            return count_result(ctx, q, objs, None)
        return _dirobj_list(ctx, q, token, path, objs, "directoryObjects", cast=cast)
    if nav in ("memberOf", "transitiveMemberOf"):
        return _memberof_list(ctx, q, token, path, d.id, nav == "transitiveMemberOf", rest[1:], ())
    raise _bad(f"Resource not found for the segment '{nav}'.")


def _service_principals(ctx: Ctx, method: str, segs: list[str], q: Query, token: dict[str, Any] | None,
                        body: Any, path: str) -> Result:
    t = ctx.tenant
    if method != "GET":
        raise GraphError(405, "Request_BadRequest", "The simulator's directory is read-only through Graph.")
    if len(segs) == 1:
        return _typed_list(ctx, q, token, path, "servicePrincipal", t.service_principals, "sp.read",
                           "servicePrincipals", filterable=("id", "appId", "displayName"))
    sp = t.service_principals.get(segs[1])
    if sp is None:
        raise _not_found(segs[1])
    return _sp_item(ctx, q, token, path, sp, segs[2:])


def _sp_item(ctx: Ctx, q: Query, token: dict[str, Any] | None, path: str, sp: Any, rest: list[str]) -> Result:
    if not rest:
        require(ctx, "sp.read")
        _check_only(q, {"$select"}, "a single servicePrincipal")
        return Result(200, {"@odata.context": _context(ctx, "servicePrincipals/$entity"),
                            **render(ctx, sp, parse_select(q, "servicePrincipal"), typed=False)})
    if rest == ["endpoints"]:
        require(ctx, "sp.endpoints")
        _check_only(q, {"$select", "$top", "$skiptoken", "$filter"}, "endpoints")
        sel = _loose_select(q)
        rows = [({k: e.get(k) for k in sel} if sel else dict(e)) for e in sp.endpoints]
        if q.get("$filter"):
            flt = parse_filter(q, None, allowed=("providerName", "capability", "id", "uri"))
            rows = [r for r, e in zip(rows, sp.endpoints, strict=True) if flt and flt.pred(e)]
        return Result(200, {"@odata.context": _context(ctx, f"servicePrincipals('{sp.id}')/endpoints"),
                            "value": rows})
    raise _bad(f"Resource not found for the segment '{rest[0]}'.")


def _mam_page(ctx: Ctx, q: Query, token: dict[str, Any] | None, path: str, regs: list[Any]) -> Result:
    # Intune list endpoints may silently ignore unsupported $filter and return everything (graph.md §2;
    # microsoft-graph-explorer-v4#3125): the simulator accepts $filter here and ignores it. $top is honoured.
    _check_only(q, {"$select", "$top", "$skiptoken", "$filter", "$count", "$orderby", "$expand"},
                "managedAppRegistrations")
    top = parse_top(q) or DEFAULT_TOP
    start = int(token.get("i", 0)) if token else 0
    if token is not None and token.get("r") != path:
        raise _bad("The $skiptoken does not belong to this request.", "Request_BadRequest")
    sel = _loose_select(q)
    chunk = regs[start:start + top]
    rows = []
    for m in chunk:
        p = m.props()
        rows.append({k: p.get(k) for k in ["@odata.type", *sel]} if sel else p)
    body: dict[str, Any] = {"@odata.context": _context(ctx, "deviceAppManagement/managedAppRegistrations"),
                            "value": rows}
    if start + top < len(regs):
        tok = seal(ctx.world, {"k": "list", "t": ctx.tenant.tenant_id, "r": path, "i": start + top,
                               "iat": int(ctx.now)})
        params = {k: v for k, v in q.opts.items() if k != "$skiptoken"}
        params["$skiptoken"] = tok
        body["@odata.nextLink"] = _link(ctx, path, params)
    return Result(200, body)


def _device_app_management(ctx: Ctx, method: str, segs: list[str], q: Query, token: dict[str, Any] | None,
                           body: Any, path: str) -> Result:
    if method != "GET" or len(segs) < 2 or segs[1] != "managedAppRegistrations":
        raise _bad(f"Resource not found for the segment '{'/'.join(segs[1:]) or segs[0]}'.")
    require(ctx, "mam.read")
    t = ctx.tenant
    if len(segs) == 2:
        return _mam_page(ctx, q, token, path, list(t.mam))
    if len(segs) == 3:
        m = t.mam.get(segs[2])
        if m is None:
            raise _not_found(segs[2])
        return Result(200, {"@odata.context": _context(ctx, "deviceAppManagement/managedAppRegistrations/$entity"),
                            **m.props()})
    raise _bad(f"Resource not found for the segment '{segs[3]}'.")


# --------------------------------------------------------------------------------------------------------------
# Delta
# --------------------------------------------------------------------------------------------------------------

_DELTA_KIND = {"users": "user", "groups": "group", "devices": "device"}


def _delta_gone(ctx: Ctx, path: str, code: str, message: str) -> GraphError:
    # 410 Gone with Location = the request URL with an empty $deltatoken: restart with a full sync
    # (https://learn.microsoft.com/graph/delta-query-overview, graph.md §4).
    return GraphError(410, code, message, {"Location": f"{ctx.base}/v1.0/{path}?$deltatoken="})


def _expired() -> GraphError:
    # Directory delta tokens live 7 days; then "syncStateNotFound" (devblogs duration-of-change-tracking-tokens).
    return GraphError(400, "syncStateNotFound",
                      "The delta token is expired and data must be synchronized again.")


def delta(ctx: Ctx, q: Query, stream: str, path: str) -> Result:
    kind = _DELTA_KIND[stream]
    t = ctx.tenant
    # users/groups delta: no $expand, $top, $orderby; $filter only id eq … (group-delta.md, user-delta.md);
    # devices/delta: $select and $filter by id (device-delta.md).
    for opt in ("$expand", "$top", "$orderby", "$search", "$skip", "$count"):
        if opt in q:
            raise _unsupported(f"The query option '{opt}' is not supported with delta queries.")
    raw_tok = q.get("$skiptoken") or q.get("$deltatoken")
    state: dict[str, Any] | None = None
    if raw_tok is not None and raw_tok != "" and q.get("$deltatoken") != "latest":
        if q.get("$skiptoken") is not None and ("$select" in q or "$filter" in q):
            # "$select together with $skipToken is not supported" (group-delta.md; graph.md §4).
            raise _unsupported("Query parameters cannot be combined with a $skiptoken on delta queries.")
        state = unseal(ctx.world, raw_tok)
        if state is None or state.get("k") != "delta" or state.get("t") != t.tenant_id \
                or state.get("s") != stream or state.get("e") != t.epoch:
            raise _delta_gone(ctx, path, "resyncRequired",
                              "The delta token is invalid or no longer valid; a full synchronization is required.")
        fault = _consume_fault(ctx, "delta_expiry")
        if fault is not None:
            if getattr(fault, "status", None) == 410:
                raise _delta_gone(ctx, path, "resyncRequired", "Resync required (injected fault).")
            raise _expired()
        if ctx.now - float(state.get("iat", 0)) > DELTA_TTL:
            raise _expired()
    # Query shape: from the token if present (tokens encode the original query; graph.md §4), else from the URL.
    if state is not None:
        sel = state.get("sel")
        ids = state.get("ids")
        if q.get("$deltatoken") is not None and "$select" in q:
            sel = parse_select(q, kind, extra=("members",) if stream == "groups" else ())
    else:
        sel = parse_select(q, kind, extra=("members",) if stream == "groups" else ())
        flt = parse_filter(q, kind, allowed=("id",))
        ids = None
        if flt is not None:
            if flt.id_values is None:
                raise _unsupported("Delta queries support $filter only on id (id eq '…' or …).")
            if len(flt.id_values) > DELTA_ID_FILTER_MAX:
                raise _unsupported(f"At most {DELTA_ID_FILTER_MAX} ids can be filtered in a delta query.")
            ids = flt.id_values
    base_q = {"sel": sel, "ids": ids}
    if q.get("$deltatoken") == "latest":
        if stream == "devices":
            raise _bad("$deltatoken=latest is supported on users and groups only.")
        # Sync from now: a deltaLink and no data, for users and groups ("$deltaToken=latest" in the optional query
        # parameters of https://learn.microsoft.com/graph/delta-query-overview; reference/graph.md §4). The
        # connector's full reconcile takes its groups cursor this way and walks only the groups in scope.
        return _delta_body(ctx, stream, sel, [], None, _delta_link_token(ctx, stream, base_q, t.seq), path)
    if state is None or state.get("ph") == "d":
        # New round: initial (no token) or incremental from a deltaLink (seq f).
        phase = "i" if state is None else "n"
        frm = 0 if state is None else int(state["f"])
        upto = t.seq
        cursor: Any = None
    else:
        phase, frm, upto, cursor = state["ph"], int(state["f"]), int(state["u"]), state.get("c")
    with_members = stream == "groups" and sel is not None and "members" in sel
    units, next_cursor = (_initial_units if phase == "i" else _incremental_units)(
        ctx, stream, sel, ids, frm, upto, cursor, with_members)
    if phase == "i" and stream == "groups":
        units, next_cursor = _glitch(ctx, units, next_cursor)
    if next_cursor is not None:
        tok = seal(ctx.world, {"k": "delta", "t": t.tenant_id, "e": t.epoch, "s": stream, "ph": phase, "f": frm,
                               "u": upto, "c": next_cursor, "iat": int(ctx.now), **base_q})
        return _delta_body(ctx, stream, sel, units, tok, None, path)
    return _delta_body(ctx, stream, sel, units, None, _delta_link_token(ctx, stream, base_q, upto), path)


def _glitch(ctx: Ctx, units: list[dict[str, Any]], next_cursor: Any) -> tuple[list[dict[str, Any]], Any]:
    """Injected glitches of a new groups/delta round (faults.py): empty, truncated, or a member list cut short.

    A distributed directory can answer from a replica that has not seen everything yet (eventual consistency:
    https://devblogs.microsoft.com/identity/designing-for-eventual-consistency-for-microsoft-entra/); the round still
    ends with a valid deltaLink, so the client cannot tell from the protocol alone.
    """
    if _consume_fault(ctx, "round_empty") is not None:
        return [], None
    if _consume_fault(ctx, "round_truncated") is not None:
        return units[: len(units) // 2], None
    if _consume_fault(ctx, "members_short") is not None:
        for row in units:
            members = row.get("members@delta") or []
            if len(members) >= 2:
                row["members@delta"] = members[: len(members) // 2]
    return units, next_cursor


def _member_glitch(ctx: Ctx, objs: list[Any]) -> list[Any]:
    """The same glitches on a group's member list (faults.py): a replica that answers no members, or a member list
    that ends early without a nextLink (eventual consistency: the client cannot tell from the protocol alone)."""
    if _consume_fault(ctx, "round_empty") is not None:
        return []
    if _consume_fault(ctx, "round_truncated") is not None or _consume_fault(ctx, "members_short") is not None:
        return objs[: len(objs) // 2]
    return objs


def _delta_link_token(ctx: Ctx, stream: str, base_q: dict[str, Any], seq: int) -> str:
    t = ctx.tenant
    return seal(ctx.world, {"k": "delta", "t": t.tenant_id, "e": t.epoch, "s": stream, "ph": "d", "f": seq,
                            "iat": int(ctx.now), **base_q})


def _delta_body(ctx: Ctx, stream: str, sel: list[str] | None, rows: list[dict[str, Any]], next_tok: str | None,
                delta_tok: str | None, path: str) -> Result:
    frag = stream + (f"({','.join(sel)})" if sel else "")
    body: dict[str, Any] = {"@odata.context": _context(ctx, frag), "value": rows}
    # Never both links on one page (delta-query-overview).
    if next_tok is not None:
        body["@odata.nextLink"] = f"{ctx.base}/v1.0/{path}?$skiptoken={next_tok}"
    else:
        body["@odata.deltaLink"] = f"{ctx.base}/v1.0/{path}?$deltatoken={delta_tok}"
    return Result(200, body)


def _coll(t: Tenant, stream: str) -> Collection:
    return {"users": t.users, "groups": t.groups, "devices": t.devices}[stream]


def _delta_row(ctx: Ctx, obj: Any, sel: list[str] | None) -> dict[str, Any]:
    props: dict[str, Any] = obj.props()
    if sel is not None:
        row = {k: props[k] for k in sel if k in props}
        row["id"] = obj.id  # delta rows always carry id (delta-query-overview examples)
        return row
    return props


def _member_refs(members: Iterable[tuple[str, str, bool]], reason: str = "deleted") -> list[dict[str, Any]]:
    out = []
    for mid, kind, added in members:
        ref: dict[str, Any] = {"@odata.type": ODATA_TYPES.get(kind, "#microsoft.graph.directoryObject"), "id": mid}
        if not added:
            ref["@removed"] = {"reason": reason}  # members@delta removal (delta-query-groups.md)
        out.append(ref)
    return out


def _page_size(ctx: Ctx, stream: str) -> int:
    return ctx.world.device_delta_page_size if stream == "devices" else ctx.world.delta_page_size


def _initial_units(ctx: Ctx, stream: str, sel: list[str] | None, ids: list[str] | None, frm: int, upto: int,
                   cursor: Any, with_members: bool) -> tuple[list[dict[str, Any]], Any]:
    """First round: current objects in creation order; a big group's members are split across records/pages."""
    coll = _coll(ctx.tenant, stream)
    # cursor = [ordinal of the next object to emit, member offset inside it]
    cur_ord, moff = cursor or [0, 0]
    i = bisect.bisect_left(coll.ords, cur_ord)
    page = _page_size(ctx, stream)
    chunk = ctx.world.delta_member_chunk
    idset = set(ids) if ids else None
    rows: list[dict[str, Any]] = []
    items = coll.items
    while i < len(items):
        obj = items[i]
        if idset is not None and obj.id not in idset:
            i += 1
            continue
        start = moff if obj.ord == cur_ord else 0
        if len(rows) >= page:
            return rows, [obj.ord, start]
        if with_members:
            members = list(obj.members.items())
            part = members[start:start + chunk]
            row = _delta_row(ctx, obj, [s for s in sel or () if s != "members"] or ["id"])
            row["members@delta"] = _member_refs((m, k, True) for m, k in part)
            rows.append(row)
            if start + chunk < len(members):
                # Same group again on the next record/page with the rest of its members (delta-query-groups.md).
                cur_ord, moff = obj.ord, start + chunk
                continue
        else:
            rows.append(_delta_row(ctx, obj, sel))
        i += 1
    return rows, None


def _incremental_units(ctx: Ctx, stream: str, sel: list[str] | None, ids: list[str] | None, frm: int, upto: int,
                       cursor: Any, with_members: bool) -> tuple[list[dict[str, Any]], Any]:
    """A round from a deltaLink: objects changed in the journal window (frm, upto], in first-change order."""
    t = ctx.tenant
    entries = t.entries(stream, frm, upto)
    tracked = set(sel) - {"members"} if sel is not None else None
    per_obj: dict[str, list[JournalEntry]] = {}
    for e in entries:
        per_obj.setdefault(e.obj_id, []).append(e)
    coll = _coll(t, stream)
    idset = set(ids) if ids else None
    units: list[dict[str, Any]] = []
    chunk = ctx.world.delta_member_chunk
    for oid, es in per_obj.items():
        if idset is not None and oid not in idset:
            continue
        last = es[-1]
        obj = coll.get(oid)
        if last.kind == "del" or obj is None:
            reason = last.reason if last.kind == "del" else "deleted"
            units.append({"id": oid, "@removed": {"reason": reason}})
            continue
        relevant = any(e.kind == "new" or (e.kind == "upd" and (tracked is None or e.props & tracked)) for e in es)
        net: dict[str, tuple[str, bool]] = {}
        if with_members:
            for e in es:
                if e.kind in ("madd", "mrem") and e.member is not None:
                    net[e.member[0]] = (e.member[1], e.kind == "madd")
        if not relevant and not net:
            continue  # change outside the tracked ($select) properties: not reported (graph.md §4)
        base_sel = [s for s in sel if s != "members"] if sel is not None else None
        if with_members:
            refs = [(m, k, a) for m, (k, a) in net.items()]
            parts = [refs[j:j + chunk] for j in range(0, len(refs), chunk)] or [[]]
            for part in parts:
                row = _delta_row(ctx, obj, base_sel or ["id"])
                row["members@delta"] = _member_refs(part)
                units.append(row)
        else:
            units.append(_delta_row(ctx, obj, base_sel))
    start = int(cursor or 0)
    page = _page_size(ctx, stream)
    chunk_rows = units[start:start + page]
    return chunk_rows, (start + page if start + page < len(units) else None)


def _consume_fault(ctx: Ctx, kind: str) -> Any:
    if ctx.request is None or ctx.inner:
        return None
    faults = (ctx.request.app.get(_FAULTS_KEY) if _FAULTS_KEY is not None else None) or ctx.request.app.get("faults")
    if faults is None:
        return None
    return faults.consume(kind, ctx.request)


# --------------------------------------------------------------------------------------------------------------
# Dispatcher
# --------------------------------------------------------------------------------------------------------------

_HANDLERS: dict[str, Callable[..., Result]] = {
    "me": _me, "users": _users, "groups": _groups, "devices": _devices, "servicePrincipals": _service_principals,
    "deviceAppManagement": _device_app_management,
}


def _split_path(path: str) -> list[str]:
    p = path.split("?", 1)[0].strip("/")
    segs = [unquote(s) for s in p.split("/") if s]
    # The SDK calls /groups/delta() with parentheses (azure.md §4): accept both forms.
    return [s[:-2] if s.endswith("()") else s for s in segs]


def execute(ctx: Ctx, method: str, path: str, raw_query: str, headers: Mapping[str, str], body: Any) -> Result:
    """Answer one Graph request (path without /v1.0). Raises nothing: errors become Graph error results."""
    try:
        return _execute(ctx, method.upper(), path, raw_query, headers, body)
    except GraphError as err:
        return Result(err.status, err, dict(err.headers))


def _execute(ctx: Ctx, method: str, path: str, raw_query: str, headers: Mapping[str, str], body: Any) -> Result:
    segs = _split_path(path)
    if not segs:
        raise _bad("Invalid request: no resource segment.")
    q = parse_query(raw_query, headers)
    token = None
    tok = q.get("$skiptoken")
    head, key_prop, key_val = _key_in_parens(segs[0])
    is_delta = len(segs) >= 2 and segs[1] == "delta"
    if tok is not None and not is_delta:
        token = unseal(ctx.world, tok)
        if token is None or token.get("k") != "list" or token.get("t") != ctx.tenant.tenant_id:
            raise _bad("The specified page token value has expired or is invalid.", "Request_BadRequest")
    canonical = "/".join(segs)
    if key_prop is not None:
        # Alternate keys: devices(deviceId='…') (device-get), servicePrincipals(appId='…') (serviceprincipal-get).
        t = ctx.tenant
        if head == "devices" and key_prop == "deviceId":
            require(ctx, "devices.read")
            oid = t.device_id_index.get(key_val or "")
            if oid is None:
                raise _not_found(key_val or "")
            return _device_item(ctx, q, token, canonical, t.devices.by_id[oid], segs[1:])
        if head == "servicePrincipals" and key_prop == "appId":
            sp = next((s for s in t.service_principals if s.app_id == key_val), None)
            if sp is None:
                raise _not_found(key_val or "")
            return _sp_item(ctx, q, token, canonical, sp, segs[1:])
        raise _bad(f"Resource not found for the segment '{segs[0]}'.")
    handler = _HANDLERS.get(head)
    if handler is None:
        raise _bad(f"Resource not found for the segment '{head}'.")
    return handler(ctx, method, segs, q, token, body, canonical)


# --------------------------------------------------------------------------------------------------------------
# $batch
# --------------------------------------------------------------------------------------------------------------


def batch(ctx: Ctx, body: Any, outer_headers: Mapping[str, str]) -> Result:
    """JSON batching (https://learn.microsoft.com/graph/json-batching; graph.md §3)."""
    if not isinstance(body, dict) or not isinstance(body.get("requests"), list):
        raise _bad("Invalid batch payload format: a JSON object with a 'requests' array is required.")
    reqs = body["requests"]
    if not reqs:
        raise _bad("Invalid batch payload format: 'requests' is empty.")
    if len(reqs) > BATCH_MAX:
        raise _bad(f"The number of requests in the batch exceeds the limit of {BATCH_MAX}.")
    by_id: dict[str, dict[str, Any]] = {}
    for r in reqs:
        if not isinstance(r, dict) or not isinstance(r.get("id"), str) or not r["id"] \
                or not isinstance(r.get("method"), str) or not isinstance(r.get("url"), str):
            raise _bad("Invalid batch payload format: each request needs string 'id', 'method' and 'url'.")
        if r["id"] in by_id:
            raise _bad(f"Batch request ids must be unique; '{r['id']}' is repeated.")
        by_id[r["id"]] = r
    for r in reqs:
        deps = r.get("dependsOn")
        if deps is not None and (not isinstance(deps, list) or any(d not in by_id or d == r["id"] for d in deps)):
            raise _bad(f"Request '{r['id']}' has an invalid dependsOn.")
    order = _topo(reqs)
    if order is None:
        raise _bad("Batch dependsOn forms a cycle.")
    throttle = None
    if ctx.request is not None:
        app = ctx.request.app
        throttle = (app.get(_THROTTLE_KEY) if _THROTTLE_KEY is not None else None) or app.get("throttle")
    statuses: dict[str, int] = {}
    responses: list[dict[str, Any]] = []
    for r in order:
        rid = r["id"]
        sub = _batch_item(ctx, r, statuses, throttle)
        statuses[rid] = sub["status"]
        responses.append(sub)
    # "Responses come back in any order: match on id" (json-batching): return them reversed so clients must.
    responses.reverse()
    return Result(200, {"responses": responses})


def _topo(reqs: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    done: set[str] = set()
    out: list[dict[str, Any]] = []
    pending = list(reqs)
    while pending:
        progressed = False
        for r in list(pending):
            if all(d in done for d in r.get("dependsOn") or ()):
                out.append(r)
                done.add(r["id"])
                pending.remove(r)
                progressed = True
        if not progressed:
            return None
    return out


def _batch_item(ctx: Ctx, r: dict[str, Any], statuses: dict[str, int], throttle: Any) -> dict[str, Any]:
    rid, method, url = r["id"], r["method"].upper(), r["url"]
    headers = r.get("headers") or {}
    req_id = str(uuid.uuid4())

    def err(status: int, code: str, message: str, extra: dict[str, str] | None = None) -> dict[str, Any]:
        e = GraphError(status, code, message)
        h = {"Content-Type": "application/json", "request-id": req_id, **(extra or {})}
        return {"id": rid, "status": status, "headers": h,
                "body": error_body(e, req_id, str(headers.get("client-request-id", req_id)), ctx.now)}

    for dep in r.get("dependsOn") or ():
        if statuses.get(dep, 500) >= 400:
            # A failed dependency fails its dependents with 424 (json-batching "dependsOn").
            return err(424, "FailedDependency", f"The request depends on '{dep}', which failed.")
    if not isinstance(headers, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                for k, v in headers.items()):
        return err(400, "BadRequest", "Request headers must be an object of strings.")
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", url):
        # Items need URLs relative to the version; absolute ones are rejected per item (msgraph-sdk-python#1015,
        # msgraph-sdk-python-core#1116; azure.md §4).
        return err(400, "BadRequest", "Invalid request URL: batch request URLs must be relative, e.g. '/users'.")
    if "body" in r and r["body"] is not None and not any(k.lower() == "content-type" for k in headers):
        # "headers with Content-Type are required when there is a body" (json-batching).
        return err(400, "BadRequest", "Content-Type header is required when a body is present.")
    path, _, raw_query = url.partition("?")
    if _split_path(path)[:1] == ["$batch"]:
        return err(400, "BadRequest", "Nested $batch requests are not supported.")
    ru = pricing.price(method, path, raw_query)
    if throttle is not None and ru > 0:
        # Each inner request is throttled individually: inner 429 with Retry-After (graph.md §3).
        retry = throttle.charge(tenant_id=ctx.tenant.tenant_id, app_id=str(ctx.principal.app_id), ru=ru,
                                route=pricing.route_label(path), write=pricing.is_write(method, path))
        throttle.counters.record_batched(ctx.tenant.tenant_id, pricing.route_label(path))
        if retry is not None:
            return err(429, "TooManyRequests", "Too many requests. Retry after the interval in Retry-After.",
                       {"Retry-After": _fmt_retry(retry), "x-ms-resource-unit": str(ru)})
    res = execute(ctx, method, path, raw_query, headers, r.get("body"))
    h = {"Content-Type": "application/json;odata.metadata=minimal;charset=utf-8", "request-id": req_id,
         **res.headers}
    if ru > 0:
        h["x-ms-resource-unit"] = str(ru)
    body: Any = res.body
    if isinstance(body, GraphError):
        body = error_body(body, req_id, str(headers.get("client-request-id", req_id)), ctx.now)
    return {"id": rid, "status": res.status, "headers": h, "body": body}


def _fmt_retry(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:.3f}".rstrip("0")


# --------------------------------------------------------------------------------------------------------------
# aiohttp glue
# --------------------------------------------------------------------------------------------------------------


def _world(app: Mapping[Any, Any]) -> World:
    w = (app.get(_WORLD_KEY) if _WORLD_KEY is not None else None) or app.get("world")
    if w is None:
        raise RuntimeError("graph routes need the World in the app")
    return w  # type: ignore[no-any-return]


async def handle(request: web.Request) -> web.StreamResponse:
    now = _now(request.app)
    req_id = str(uuid.uuid4())
    client_req = request.headers.get("client-request-id", req_id)
    world = _world(request.app)
    hdrs = {"request-id": req_id, "client-request-id": client_req,
            "x-ms-ags-diagnostic": '{"ServerInfo":{"DataCenter":"Simulator","Slice":"E","Ring":"0"}}'}
    principal = request.get("principal")
    try:
        if principal is None:
            raise GraphError(401, "InvalidAuthenticationToken", "Access token is empty.")
        tenant = world.tenants.get(str(principal.tenant_id))
        if tenant is None:
            raise GraphError(401, "InvalidAuthenticationToken", "The tenant of the access token is not known.")
        tail = request.match_info.get("tail", "")
        ctx = Ctx(world, tenant, principal, f"{request.url.scheme}://{request.url.host}"
                  + (f":{request.url.port}" if request.url.port else ""), now, request)
        body: Any = None
        if request.method in ("POST", "PATCH", "PUT") and request.can_read_body:
            raw = await request.read()
            if raw:
                try:
                    body = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    raise _bad("Unable to read JSON request payload.") from None
        raw_query = request.rel_url.raw_query_string
        if _split_path(tail) == ["$batch"]:
            if request.method != "POST":
                raise GraphError(405, "BadRequest", "$batch accepts POST only.")
            res = batch(ctx, body, request.headers)
        else:
            res = execute(ctx, request.method, tail, raw_query, request.headers, body)
    except GraphError as err:
        res = Result(err.status, err, dict(err.headers))
    hdrs.update(res.headers)
    if isinstance(res.body, GraphError):
        payload = orjson.dumps(error_body(res.body, req_id, client_req, now))
        return web.Response(status=res.status, body=payload, headers={**hdrs, "Content-Type": GRAPH_CT})
    if isinstance(res.body, str):
        hdrs.setdefault("Content-Type", "text/plain;charset=utf-8")
        return web.Response(status=res.status, text=res.body, headers={k: v for k, v in hdrs.items()
                                                                       if k != "Content-Type"},
                            content_type="text/plain")
    if res.body is None:
        return web.Response(status=res.status, headers=hdrs)
    return web.Response(status=res.status, body=orjson.dumps(res.body), headers={**hdrs, "Content-Type": GRAPH_CT})


def register(app: web.Application, world: World) -> None:
    """Add the Graph v1.0 routes. The core middleware authenticates and prices top-level requests."""
    if _WORLD_KEY is not None and app.get(_WORLD_KEY) is None:
        app[_WORLD_KEY] = world
    app.router.add_route("*", "/v1.0/{tail:.*}", handle)


# --------------------------------------------------------------------------------------------------------------
# Admin API: tenants, mutations, ground truth
# --------------------------------------------------------------------------------------------------------------


def _admin_error(message: str, field_name: str | None, status: int = 400) -> web.Response:
    return web.json_response({"error": message, "field": field_name}, status=status)


async def _json_body(request: web.Request) -> Any:
    raw = await request.read()
    if not raw:
        raise DirectoryError("body must be JSON", "body")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise DirectoryError("body is not valid JSON", "body") from None


def register_admin(app: web.Application, world: World) -> None:
    """Add /_sim/tenants… routes: create tenants/fleets, list, delete, mutate, ground truth."""
    import asyncio

    from simulator import scenarios

    async def create(request: web.Request) -> web.Response:
        try:
            body = await _json_body(request)
            if not isinstance(body, dict):
                raise DirectoryError("body must be a JSON object", "body")
            unknown = set(body) - {"scenario", "seed", "tenant_id", "count", "with_intune_sp"}
            if unknown:
                raise DirectoryError(f"unknown field(s) {sorted(unknown)}", sorted(unknown)[0])
            scenario = body.get("scenario")
            seed = body.get("seed", 1)
            if not isinstance(seed, int) or isinstance(seed, bool):
                raise DirectoryError("seed must be an integer", "seed")
            with_sp = body.get("with_intune_sp", True)
            if not isinstance(with_sp, bool):
                raise DirectoryError("with_intune_sp must be a boolean", "with_intune_sp")
            if scenario == "fleet":
                plan = scenarios.fleet_plan(body.get("count"), seed)  # type: ignore[arg-type]
                out = []
                for sc, s in plan:
                    t = scenarios.add_tenant(world, sc, s, with_intune_sp=with_sp)
                    out.append(world.summary(t.tenant_id))
                return web.json_response({"tenants": out})
            if not isinstance(scenario, str) or scenario not in scenarios.SIZES:
                raise DirectoryError(f"scenario must be one of {list(scenarios.SCENARIOS)}", "scenario")
            if "count" in body:
                raise DirectoryError("count is only valid with scenario 'fleet'", "count")
            tid = body.get("tenant_id")
            if tid is not None and not isinstance(tid, str):
                raise DirectoryError("tenant_id must be a GUID string", "tenant_id")
            if scenario in ("L", "XL"):
                # Big tenants are generated off the event loop so the server keeps answering meanwhile.
                loop = asyncio.get_running_loop()
                tenant = await loop.run_in_executor(None, scenarios.build, scenario, seed, None)
                if tid is not None:
                    tid = str(uuid.UUID(tid))
                    if tid in world.tenants:
                        raise DirectoryError("tenant already exists", "tenant_id")
                    tenant.tenant_id = tid
                world.install(tenant, with_intune_sp=with_sp)
            else:
                tenant = scenarios.add_tenant(world, scenario, seed, tid, with_intune_sp=with_sp)
            return web.json_response(world.summary(tenant.tenant_id))
        except DirectoryError as e:
            return _admin_error(str(e), e.field)
        except ValueError as e:
            return _admin_error(str(e), "tenant_id")

    async def list_tenants(request: web.Request) -> web.Response:
        return web.json_response({"tenants": [world.summary(t) for t in world.tenants]})

    async def get_tenant(request: web.Request) -> web.Response:
        try:
            return web.json_response(world.summary(request.match_info["tid"]))
        except DirectoryError as e:
            return _admin_error(str(e), e.field, 404)

    async def delete_tenant(request: web.Request) -> web.Response:
        try:
            world.remove_tenant(request.match_info["tid"])
            return web.json_response({"ok": True})
        except DirectoryError as e:
            return _admin_error(str(e), e.field, 404)

    async def truth(request: web.Request) -> web.Response:
        tid = request.match_info["tid"]
        if tid not in world.tenants:
            return _admin_error("unknown tenant", "tenant_id", 404)
        groups = request.query.getall("groups", [])
        if not groups:
            groups = list(world.tenants[tid].enrollment_groups)
        plats = request.query.get("platforms")
        platforms = [p.strip() for p in plats.split(",") if p.strip()] if plats else None
        if plats is not None and not platforms:
            return _admin_error("platforms must be a comma-separated list", "platforms")
        kw = {"platforms": set(platforms)} if platforms else {}
        return web.json_response(world.ground_truth(tid, groups, **kw))

    async def mutations(request: web.Request) -> web.Response:
        tid = request.match_info["tid"]
        if tid not in world.tenants:
            return _admin_error("unknown tenant", "tenant_id", 404)
        try:
            body = await _json_body(request)
            ops = body if isinstance(body, list) else [body]
            results = []
            for i, op in enumerate(ops):
                if not isinstance(op, dict) or not isinstance(op.get("op"), str):
                    raise DirectoryError("each mutation must be an object with a string 'op'",
                                         "op" if len(ops) == 1 else f"[{i}].op")
                args = {k: v for k, v in op.items() if k != "op"}
                results.append(world.mutate_at(tid, op["op"], args, _now(request.app)))
            return web.json_response(results[0] if not isinstance(body, list) else {"results": results})
        except DirectoryError as e:
            return _admin_error(str(e), e.field)

    app.router.add_post("/_sim/tenants", create)
    app.router.add_get("/_sim/tenants", list_tenants)
    app.router.add_get("/_sim/tenants/{tid}", get_tenant)
    app.router.add_delete("/_sim/tenants/{tid}", delete_tenant)
    app.router.add_get("/_sim/tenants/{tid}/truth", truth)
    app.router.add_post("/_sim/tenants/{tid}/mutations", mutations)


__all__ = ["INTUNE_APP_ID", "PERMISSIONS", "Ctx", "Group", "Result", "batch", "execute", "register",
           "register_admin"]

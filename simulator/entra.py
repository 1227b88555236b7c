"""Simulated Microsoft Entra ID: OIDC discovery, token endpoint (client credentials), JWKS, consent, test tokens.

What it models (sources in the one-line comments next to each rule):
- `GET /{tenant}/v2.0/.well-known/openid-configuration` (and the v1 document without `/v2.0`), the keys document
  `GET /{tenant}/discovery/v2.0/keys` (also `/discovery/keys`), and `GET /common/discovery/instance` for MSAL
  instance discovery (unused with `disable_instance_discovery=True`).
- `POST /{tenant}/oauth2/v2.0/token` with `grant_type=client_credentials`, authenticated by `client_secret` or by a
  `client_assertion` (jwt-bearer, RS256 or PS256 as MSAL sends it, checked against the certificate registered on the
  app, `aud` = token endpoint, `iss` = `sub` = client id, exp/nbf, `x5t`/`x5t#S256`).
- `scope` must be exactly one `<resource>/.default`; the token's `roles` are the consented permissions that belong to
  that resource. Errors are the AADSTS codes Entra returns (see ERRORS below).

Time: tokens and client assertions use wall time (like Entra, independent of the simulated clock offset).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import secrets as pysecrets
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from simulator.clouds import ACTIVE

# --- Resource catalogue -----------------------------------------------------------------------------------------
# Resource identifiers of the cloud this process impersonates (simulator/clouds.py; public by default).
GRAPH_RESOURCE = ACTIVE.graph_resource
GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"
INTUNE_RESOURCE = ACTIVE.intune_resource
INTUNE_API_APP_ID = "c161e42e-d4df-4a3d-9b42-e7a3c31f59d4"  # "Microsoft Intune API" (intune.md §1)
VAULT_RESOURCE = ACTIVE.vault_resource
CONSOLE_AUDIENCE = "api://mtd-connector"

# Graph application permissions the simulator knows (names from the Graph permissions reference).
GRAPH_ROLES = frozenset({
    "User.Read.All", "Device.Read.All", "GroupMember.Read.All", "Group.Read.All", "Application.Read.All",
    "Directory.Read.All", "DeviceManagementApps.Read.All", "DeviceManagementManagedDevices.Read.All",
    "DeviceManagementServiceConfig.Read.All", "ServicePrincipalEndpoint.Read.All", "Organization.Read.All",
    "User.ReadWrite.All", "Device.ReadWrite.All", "Group.ReadWrite.All", "Directory.ReadWrite.All",
})
# "Microsoft Intune API" application roles (intune.md §1, community listing; unconfirmed).
INTUNE_ROLES = frozenset({"update_device_health", "get_device_compliance"})
CONSOLE_ROLES = frozenset({"Console.Read", "Console.Manage"})
DEFAULT_CONNECTOR_ROLES = frozenset({
    "User.Read.All", "Device.Read.All", "GroupMember.Read.All", "Application.Read.All", "DeviceManagementApps.Read.All",
    "update_device_health",
})

# Key Vault authorizes with RBAC/access policies, not token roles; the simulator does not model them (any valid token).
RESOURCES: dict[str, tuple[str, frozenset[str]]] = {
    # resource as requested (without "/.default") -> (aud claim, roles that belong to it)
    GRAPH_RESOURCE: (GRAPH_RESOURCE, GRAPH_ROLES),
    GRAPH_RESOURCE + "/": (GRAPH_RESOURCE, GRAPH_ROLES),
    GRAPH_APP_ID: (GRAPH_RESOURCE, GRAPH_ROLES),
    # Fleet requests "https://api.manage.microsoft.com//.default" (double slash, intune.md §2); the single-slash form
    # names the same resource without the trailing slash.
    INTUNE_RESOURCE: (INTUNE_RESOURCE, INTUNE_ROLES),
    INTUNE_RESOURCE.rstrip("/"): (INTUNE_RESOURCE.rstrip("/"), INTUNE_ROLES),
    INTUNE_API_APP_ID: (INTUNE_RESOURCE, INTUNE_ROLES),
    VAULT_RESOURCE: (VAULT_RESOURCE, frozenset()),
    VAULT_RESOURCE + "/": (VAULT_RESOURCE, frozenset()),
}

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# Default access-token lifetime is a random 60–90 min (learn.microsoft.com/entra/identity-platform/
# configurable-token-lifetimes); app tokens typically report expires_in 3599, which we use.
TOKEN_LIFETIME = 3599


class EntraError(Exception):
    """An AADSTS error answered by the token endpoint."""

    def __init__(self, status: int, error: str, code: int, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.code = code
        self.description = description

    def body(self) -> dict[str, Any]:
        trace, corr = str(uuid.uuid4()), str(uuid.uuid4())
        stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        return {
            "error": self.error,
            "error_description": f"AADSTS{self.code}: {self.description} Trace ID: {trace} "
                                 f"Correlation ID: {corr} Timestamp: {stamp}",
            "error_codes": [self.code],
            "timestamp": stamp,
            "trace_id": trace,
            "correlation_id": corr,
        }


# AADSTS texts as Entra returns them (public error reports; see the simulator README section of the contract):
def err_tenant_not_found(tenant: str) -> EntraError:
    # AADSTS90002, invalid_request (errorreference.com/errors/azure/AADSTS90002; taourl.com/read-1993956.html)
    return EntraError(400, "invalid_request", 90002,
                      f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing "
                      "into the correct cloud. Check with your subscription administrator, this may happen if there "
                      "are no active subscriptions for the tenant.")


def err_app_not_found(app_id: str, tenant: str) -> EntraError:
    # AADSTS700016, unauthorized_client (github.com/Azure/azure-powershell/issues/9156)
    return EntraError(400, "unauthorized_client", 700016,
                      f"Application with identifier '{app_id}' was not found in the directory '{tenant}'. This can "
                      "happen if the application has not been installed by the administrator of the tenant or "
                      "consented to by any user in the tenant. You may have sent your authentication request to the "
                      "wrong tenant.")


def err_missing_sp(app_id: str, tenant: str) -> EntraError:
    # AADSTS7000229, invalid_client (github.com/Azure/Commercial-Marketplace-SaaS-Accelerator/issues/830)
    return EntraError(400, "invalid_client", 7000229,
                      f"The client application {app_id} is missing service principal in the tenant {tenant}. See "
                      "instructions here: https://go.microsoft.com/fwlink/?linkid=2225119")


def err_bad_secret(app_id: str) -> EntraError:
    # AADSTS7000215, invalid_client, HTTP 401 (github.com/hoppscotch/hoppscotch/issues/3868)
    return EntraError(401, "invalid_client", 7000215,
                      "Invalid client secret provided. Ensure the secret being sent in the request is the client "
                      f"secret value, not the client secret ID, for a secret added to app '{app_id}'.")


def err_no_credential() -> EntraError:
    # AADSTS7000218, invalid_client (github.com/joelmeiller/cypress-msal-login/issues/11)
    return EntraError(401, "invalid_client", 7000218,
                      "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.")


def err_bad_scope(scope: str) -> EntraError:
    # AADSTS1002012, invalid_scope (github.com/MicrosoftDocs/azure-docs/issues/99862)
    return EntraError(400, "invalid_scope", 1002012,
                      f"The provided value for scope {scope} is not valid. Client credential flows must have a scope "
                      "value with /.default suffixed to the resource identifier (application ID URI).")


def err_unknown_resource(resource: str, tenant: str) -> EntraError:
    # AADSTS500011, invalid_resource (github.com/Azure-Samples/azure-search-openai-demo/issues/1969)
    return EntraError(400, "invalid_resource", 500011,
                      f"The resource principal named {resource} was not found in the tenant named {tenant}. This can "
                      "happen if the application has not been installed by the administrator of the tenant or "
                      "consented to by any user in the tenant. You might have sent your authentication request to the "
                      "wrong tenant.")


def err_assertion_signature(thumb: str) -> EntraError:
    # AADSTS700027, invalid_client
    # (learn.microsoft.com/azure/developer/java/sdk/troubleshooting-authentication-service-principal)
    return EntraError(401, "invalid_client", 700027,
                      f"Client assertion contains an invalid signature. [Reason - The key was not found., Thumbprint "
                      f"of key used by client: '{thumb}']")


def err_assertion_audience(aud: str) -> EntraError:
    # AADSTS700023 (same troubleshooting page: "Client assertion audience claim does not match Realm issuer")
    return EntraError(401, "invalid_client", 700023,
                      f"Client assertion audience claim does not match Realm issuer. Review the documentation at "
                      f"https://learn.microsoft.com/entra/identity-platform/certificate-credentials . (aud: {aud})")


def err_assertion_time(now: float, nbf: Any, exp: Any) -> EntraError:
    # AADSTS700024 (github.com/AzureAD/microsoft-authentication-library-for-dotnet/issues/4951)
    def iso(v: Any) -> str:
        try:
            return dt.datetime.fromtimestamp(float(v), dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.0000000Z")
        except (TypeError, ValueError, OverflowError):
            return "1970-01-01T00:00:00.0000000Z"
    return EntraError(401, "invalid_client", 700024,
                      f"Client assertion is not within its valid time range. Current time: {iso(now)}, assertion "
                      f"valid from {iso(nbf or 0)}, expiry time of assertion {iso(exp)}. Review the documentation at "
                      "https://learn.microsoft.com/entra/identity-platform/certificate-credentials .")


def err_assertion_subject() -> EntraError:
    # AADSTS700021 (same troubleshooting page)
    return EntraError(401, "invalid_client", 700021,
                      "Client assertion application identifier doesn't match 'client_id' parameter. Review the "
                      "documentation at https://learn.microsoft.com/entra/identity-platform/certificate-credentials .")


def err_outage() -> EntraError:
    # AADSTS90033, temporarily_unavailable, HTTP 503 (github.com/Azure/azure-sdk-for-python/issues/14241)
    return EntraError(503, "temporarily_unavailable", 90033, "A transient error has occurred. Please try again.")


# --- Keys and apps ------------------------------------------------------------------------------------------------
def _b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _thumb_bytes(value: str) -> bytes:
    """Decode an x5t / x5t#S256 / kid thumbprint: base64url (padded or not, as MSAL sends it) or hex."""
    v = value.strip()
    if len(v) in (40, 64):
        try:
            return bytes.fromhex(v)
        except ValueError:
            pass
    try:
        return base64.urlsafe_b64decode(v.replace("+", "-").replace("/", "_") + "=" * (-len(v) % 4))
    except (ValueError, TypeError):
        return b""


def _int_b64u(n: int) -> str:
    return _b64u(n.to_bytes((n.bit_length() + 7) // 8, "big"))


def _self_signed(key: rsa.RSAPrivateKey, cn: str) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=365))
        .sign(key, hashes.SHA256())
    )


@dataclass
class SigningKey:
    kid: str
    private_key: rsa.RSAPrivateKey
    cert: x509.Certificate

    @classmethod
    def generate(cls) -> SigningKey:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        cert = _self_signed(key, "accounts.simulator.local")
        # kid equals x5t (base64url SHA-1 thumbprint of the signing certificate), as in
        # https://login.microsoftonline.com/common/discovery/v2.0/keys.
        kid = _b64u(cert.fingerprint(hashes.SHA1()))
        return cls(kid, key, cert)

    def jwk(self, issuer: str) -> dict[str, Any]:
        pub = self.private_key.public_key().public_numbers()
        return {
            "kty": "RSA", "use": "sig", "kid": self.kid, "x5t": self.kid,
            "n": _int_b64u(pub.n), "e": _int_b64u(pub.e),
            "x5c": [base64.b64encode(self.cert.public_bytes(serialization.Encoding.DER)).decode()],
            "issuer": issuer,
        }


@dataclass
class AppCertificate:
    cert: x509.Certificate

    @property
    def sha1(self) -> bytes:
        return self.cert.fingerprint(hashes.SHA1())

    @property
    def sha256(self) -> bytes:
        return self.cert.fingerprint(hashes.SHA256())


@dataclass
class App:
    app_id: str
    name: str
    home_tenant: str
    multi_tenant: bool = True
    secrets: list[str] = field(default_factory=list)
    certificates: list[AppCertificate] = field(default_factory=list)
    identifier_uri: str | None = None  # an API this app exposes (console API audience)
    app_roles: frozenset[str] = frozenset()


def sp_object_id(tenant_id: str, app_id: str) -> str:
    """Deterministic service principal object id of an app in a tenant."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"sp:{tenant_id}:{app_id}"))


class Entra:
    """Apps, tenants, consent grants, signing keys and token minting.

    Args:
        base_url: the authority (https://host:port).
        known_tenant: callable telling whether a tenant exists in the World (directory).
        user_exists: callable (tenant, user) -> bool | None (None = cannot tell).
    """

    def __init__(self, base_url: str, known_tenant: Callable[[str], bool] | None = None,
                 user_exists: Callable[[str, str], bool | None] | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._known_tenant = known_tenant or (lambda _t: False)
        self._user_exists = user_exists
        self.extra_tenants: set[str] = set()
        self.apps: dict[str, App] = {}
        self.grants: dict[tuple[str, str], frozenset[str] | None] = {}
        self.keys: list[SigningKey] = [SigningKey.generate()]
        self.outage = False
        self.token_count = 0
        self._lock = threading.Lock()
        self.connector: App | None = None
        self.console: App | None = None
        self.connector_key_pem: bytes = b""
        self.vendor_tenant = str(uuid.uuid4())
        self.extra_tenants.add(self.vendor_tenant)

    # ---- setup -------------------------------------------------------------------------------------------------
    def bootstrap(self) -> None:
        """Register the connector app (multi-tenant, secret + certificate) and the console app (vendor tenant)."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        cert = _self_signed(key, "mtd-connector")
        self.connector = App(
            app_id=str(uuid.uuid4()), name="MTD Connector", home_tenant=self.vendor_tenant, multi_tenant=True,
            secrets=[_new_secret()], certificates=[AppCertificate(cert)],
        )
        self.connector_key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ) + cert.public_bytes(serialization.Encoding.PEM)
        # The connector's own API (console audience) with app roles Console.Read / Console.Manage.
        self.connector.identifier_uri = CONSOLE_AUDIENCE
        self.connector.app_roles = CONSOLE_ROLES
        self.console = App(
            app_id=str(uuid.uuid4()), name="MTD Console", home_tenant=self.vendor_tenant, multi_tenant=False,
            secrets=[_new_secret()],
        )
        for app in (self.connector, self.console):
            self.apps[app.app_id] = app
        # The vendor admin assigned both console roles to the console app in its own tenant.
        self.grants[(self.vendor_tenant, self.console.app_id)] = CONSOLE_ROLES

    def connector_thumbprint(self) -> str:
        assert self.connector is not None
        return self.connector.certificates[0].sha1.hex().upper()

    def tenant_exists(self, tenant: str) -> bool:
        if tenant in self.extra_tenants:
            return True
        try:
            return bool(self._known_tenant(tenant))
        except Exception:  # noqa: BLE001 - guard: the simulator must keep serving
            return False

    # ---- keys --------------------------------------------------------------------------------------------------
    def rotate_keys(self, drop_old: bool = False) -> str:
        new = SigningKey.generate()
        with self._lock:
            self.keys = [new] if drop_old else [*self.keys, new]
        return new.kid

    def key_by_kid(self, kid: str) -> SigningKey | None:
        for k in self.keys:
            if k.kid == kid:
                return k
        return None

    def jwks(self, tenant: str) -> dict[str, Any]:
        iss = f"{self.base_url}/{tenant}/v2.0"
        return {"keys": [k.jwk(iss) for k in self.keys]}

    # ---- consent -----------------------------------------------------------------------------------------------
    def roles_granted(self, tenant: str, app_id: str) -> frozenset[str] | None:
        """Consented roles of app in tenant; None when the app has no service principal there."""
        key = (tenant, app_id)
        if key in self.grants:
            return self.grants[key]
        app = self.apps.get(app_id)
        if app is None:
            return None
        if app is self.connector and self.tenant_exists(tenant):
            # Every simulated customer tenant starts with the connector admin-consented (the default set).
            return DEFAULT_CONNECTOR_ROLES
        if app.home_tenant == tenant:
            return frozenset()
        return None

    def set_consent(self, tenant: str, app_id: str, roles: Iterable[str]) -> frozenset[str]:
        roles = frozenset(roles)
        unknown = roles - GRAPH_ROLES - INTUNE_ROLES - CONSOLE_ROLES
        if unknown:
            raise ValueError(f"unknown permission(s): {sorted(unknown)}")
        self.grants[(tenant, app_id)] = roles
        return roles

    def revoke_consent(self, tenant: str, app_id: str) -> None:
        self.grants[(tenant, app_id)] = None

    # ---- OIDC documents ----------------------------------------------------------------------------------------
    def openid_configuration(self, tenant: str, v2: bool = True) -> dict[str, Any]:
        b = self.base_url
        tid = tenant if tenant not in ("common", "organizations", "consumers") else "{tenantid}"
        suffix = "/v2.0" if v2 else ""
        issuer = f"{b}/{tid}/v2.0" if v2 else f"https://sts.windows.net/{tid}/"
        host = b.split("://", 1)[1]
        return {
            "token_endpoint": f"{b}/{tenant}/oauth2{suffix}/token",
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "jwks_uri": f"{b}/{tenant}/discovery{suffix}/keys",
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": issuer,
            "request_uri_parameter_supported": False,
            "userinfo_endpoint": f"{b}/oidc/userinfo",
            "authorization_endpoint": f"{b}/{tenant}/oauth2{suffix}/authorize",
            "device_authorization_endpoint": f"{b}/{tenant}/oauth2{suffix}/devicecode",
            "http_logout_supported": True,
            "frontchannel_logout_supported": True,
            "end_session_endpoint": f"{b}/{tenant}/oauth2{suffix}/logout",
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "auth_time", "acr", "nonce", "tid", "ver", "oid"],
            "kerberos_endpoint": f"{b}/{tenant}/kerberos",
            "tenant_region_scope": "EU",
            "cloud_instance_name": host,
            "cloud_graph_host_name": "graph.windows.net",
            "msgraph_host": GRAPH_RESOURCE.removeprefix("https://"),
            "rbac_url": "https://pas.windows.net",
        }

    def instance_discovery(self, authorization_endpoint: str | None) -> dict[str, Any]:
        host = self.base_url.split("://", 1)[1]
        tenant = "common"
        if authorization_endpoint and authorization_endpoint.startswith(self.base_url + "/"):
            tenant = authorization_endpoint[len(self.base_url) + 1:].split("/", 1)[0] or "common"
        return {
            "tenant_discovery_endpoint": f"{self.base_url}/{tenant}/v2.0/.well-known/openid-configuration",
            "api-version": "1.1",
            "metadata": [{"preferred_network": host, "preferred_cache": host, "aliases": [host]}],
        }

    # ---- token endpoint ----------------------------------------------------------------------------------------
    def token_endpoint_urls(self, tenant: str) -> set[str]:
        return {f"{self.base_url}/{tenant}/oauth2/v2.0/token".lower(), f"{self.base_url}/{tenant}/oauth2/token".lower()}

    def client_credentials(self, tenant: str, form: dict[str, str]) -> dict[str, Any]:
        """Handle a client_credentials request; raises EntraError with the AADSTS answer."""
        if self.outage:
            raise err_outage()
        grant = form.get("grant_type")
        if grant != "client_credentials":
            # AADSTS70003 unsupported_grant_type: the simulator only issues app tokens at this endpoint.
            raise EntraError(400, "unsupported_grant_type", 70003,
                             "The app requested an unsupported grant type. The simulator supports client_credentials.")
        if not self.tenant_exists(tenant):
            raise err_tenant_not_found(tenant)
        client_id = form.get("client_id", "")
        app = self.apps.get(client_id)
        if app is None or (not app.multi_tenant and app.home_tenant != tenant):
            raise err_app_not_found(client_id, tenant)
        method = self._authenticate(app, tenant, form)
        aud, resource_roles, version = self._resource(form.get("scope", ""), tenant)
        granted = self.roles_granted(tenant, app.app_id)
        if granted is None:
            raise err_missing_sp(app.app_id, tenant)
        roles = sorted(granted & resource_roles)
        token = self.mint_app_token(tenant, app.app_id, aud, roles, version=version,
                                    acr="2" if method == "cert" else "1")
        with self._lock:
            self.token_count += 1
        return {"token_type": "Bearer", "expires_in": TOKEN_LIFETIME, "ext_expires_in": TOKEN_LIFETIME,
                "access_token": token}

    def _resource(self, scope_param: str, tenant: str) -> tuple[str, frozenset[str], str]:
        scopes = [s for s in scope_param.split() if s not in ("openid", "profile", "offline_access", "email")]
        if len(scopes) != 1 or not scopes[0].endswith("/.default"):
            raise err_bad_scope(scope_param)
        resource = scopes[0][: -len("/.default")]
        if resource in RESOURCES:
            aud, roles = RESOURCES[resource]
            return aud, roles, "1.0"
        for app in self.apps.values():
            if app.identifier_uri and resource.rstrip("/") in (app.identifier_uri, app.app_id):
                return app.identifier_uri, app.app_roles, "2.0"
        raise err_unknown_resource(resource, tenant)

    def _authenticate(self, app: App, tenant: str, form: dict[str, str]) -> str:
        secret = form.get("client_secret")
        assertion = form.get("client_assertion")
        if secret:
            if not any(pysecrets.compare_digest(secret, s) for s in app.secrets):
                raise err_bad_secret(app.app_id)
            return "secret"
        if not assertion:
            raise err_no_credential()
        if form.get("client_assertion_type") != JWT_BEARER:
            # AADSTS50027 style: the assertion type must be jwt-bearer (RFC 7523).
            raise EntraError(400, "invalid_request", 50027,
                             f"JWT token is invalid or malformed: client_assertion_type must be {JWT_BEARER}.")
        self._verify_assertion(app, tenant, assertion)
        return "cert"

    def _verify_assertion(self, app: App, tenant: str, assertion: str) -> None:
        try:
            header = jwt.get_unverified_header(assertion)
        except jwt.PyJWTError as exc:
            raise EntraError(400, "invalid_request", 50027, f"JWT token is invalid or malformed. ({exc})") from exc
        alg = header.get("alg")
        if alg not in ("RS256", "PS256"):
            raise err_assertion_signature("")
        cert = None
        thumb = str(header.get("x5t#S256") or header.get("x5t") or header.get("kid") or "")
        digest = _thumb_bytes(thumb)
        for c in app.certificates:
            if digest in (c.sha1, c.sha256):
                cert = c
        if cert is None:
            raise err_assertion_signature(str(thumb))
        try:
            claims = jwt.decode(assertion, cert.cert.public_key(), algorithms=[alg],  # type: ignore[arg-type]
                                options={"verify_aud": False, "verify_exp": False, "verify_nbf": False,
                                         "verify_iat": False})
        except jwt.PyJWTError as exc:
            raise err_assertion_signature(str(thumb)) from exc
        if claims.get("iss") != app.app_id or claims.get("sub") != app.app_id:
            raise err_assertion_subject()
        aud = claims.get("aud")
        if not isinstance(aud, str) or aud.lower() not in self.token_endpoint_urls(tenant):
            raise err_assertion_audience(str(aud))
        now = time.time()
        exp, nbf = claims.get("exp"), claims.get("nbf")
        try:
            # 5 min clock-skew tolerance: the usual validator default (unconfirmed for Entra's assertion check).
            if exp is None or float(exp) < now - 300 or (nbf is not None and float(nbf) > now + 300):
                raise err_assertion_time(now, nbf, exp)
        except (TypeError, ValueError) as exc:
            raise err_assertion_time(now, nbf, exp) from exc

    # ---- minting -----------------------------------------------------------------------------------------------
    def _sign(self, claims: dict[str, Any]) -> str:
        key = self.keys[-1]
        return jwt.encode(claims, key.private_key, algorithm="RS256",
                          headers={"typ": "JWT", "kid": key.kid, "x5t": key.kid})

    def mint_app_token(self, tenant: str, app_id: str, aud: str, roles: list[str], *, version: str = "1.0",
                       acr: str = "1", lifetime: int = TOKEN_LIFETIME, overrides: dict[str, Any] | None = None) -> str:
        now = int(time.time())
        oid = sp_object_id(tenant, app_id)
        claims: dict[str, Any] = {
            "aud": aud, "iat": now, "nbf": now, "exp": now + lifetime, "oid": oid, "sub": oid, "tid": tenant,
            "azp": app_id, "idtyp": "app", "uti": _b64u(uuid.uuid4().bytes), "ver": version,
        }
        if version == "1.0":
            # v1.0 tokens: iss https://sts.windows.net/{tid}/, appid/appidacr (access-token-claims-reference).
            claims.update({"iss": f"https://sts.windows.net/{tenant}/", "idp": f"https://sts.windows.net/{tenant}/",
                           "appid": app_id, "appidacr": acr})
        else:
            claims.update({"iss": f"{self.base_url}/{tenant}/v2.0", "azpacr": acr})
        if roles:
            claims["roles"] = roles
        if overrides:
            for k, v in overrides.items():
                if v is None:
                    claims.pop(k, None)
                else:
                    claims[k] = v
        return self._sign(claims)

    def mint_console_token(self, roles: list[str], exp_in: int = 3600,
                           overrides: dict[str, Any] | None = None) -> str:
        assert self.console is not None
        return self.mint_app_token(self.vendor_tenant, self.console.app_id, CONSOLE_AUDIENCE, roles,
                                   version="2.0", lifetime=exp_in, overrides=overrides)

    def mint_user_token(self, tenant: str, user_id: str, scopes: list[str], *, audience: str = GRAPH_RESOURCE,
                        name: str | None = None, upn: str | None = None, exp_in: int = 3600,
                        roles: list[str] | None = None, overrides: dict[str, Any] | None = None,
                        client_id: str | None = None) -> str:
        """A delegated access token. ``client_id`` is the app the user signed in to (``azp``/``appid``): by default
        the console app for the connector's API (the console SPA asks for ``api://…/Console.SignIn``) and the
        connector app for Graph."""
        now = int(time.time())
        assert self.connector is not None and self.console is not None
        v2 = audience == CONSOLE_AUDIENCE
        client = client_id or (self.console.app_id if v2 else self.connector.app_id)
        claims: dict[str, Any] = {
            "aud": audience, "iat": now, "nbf": now, "exp": now + exp_in, "oid": user_id,
            "sub": _b64u(hashlib.sha256(f"{user_id}:{self.connector.app_id}".encode()).digest()[:24]),
            "tid": tenant, "scp": " ".join(scopes), "uti": _b64u(uuid.uuid4().bytes),
            "ver": "2.0" if v2 else "1.0",
        }
        if v2:
            claims.update({"iss": f"{self.base_url}/{tenant}/v2.0", "azp": client, "azpacr": "0"})
        else:
            claims.update({"iss": f"https://sts.windows.net/{tenant}/", "appid": client,
                           "appidacr": "1", "idtyp": "user"})
        if name:
            claims["name"] = name
        if upn:
            claims["upn"] = upn
            claims["preferred_username"] = upn
        if roles:
            claims["roles"] = roles
        for k, v in (overrides or {}).items():
            if v is None:
                claims.pop(k, None)
            else:
                claims[k] = v
        return self._sign(claims)

    def user_exists(self, tenant: str, user_id: str) -> bool | None:
        if self._user_exists is None:
            return None
        try:
            return self._user_exists(tenant, user_id)
        except Exception:  # noqa: BLE001 - guard: the simulator must keep serving
            return None


def _new_secret() -> str:
    # 40 characters like portal-generated secrets (Design note; the alphabet does not matter to clients).
    return pysecrets.token_urlsafe(30)[:40]

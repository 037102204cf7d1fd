"""OpenID Connect sign-in: the one client wobble uses for NHS CIS2, Entra ID, Keycloak or the
test suite's provider (`[sign_in]` in `wobble.toml`).

The authorization-code flow, with state, nonce and PKCE (S256):

1. `begin()` returns the provider's authorize URL and a `Pending` sign-in (state, nonce, code
   verifier) that the app keeps on the server, keyed by its state, until the browser returns;
2. the provider sends the browser back to `redirect_url` with `?code&state`; `complete(pending,
   code, state)` checks the state, exchanges the code at the token endpoint (authenticating with
   the client secret) and validates the ID token;
3. `user_from_claims(settings, claims)` gives the wobble `User` (role and teams), or refuses.

The ID token must be signed by a key in the provider's JWKS (fetched from its discovery
document; fetched again once when a token names a key id not seen yet) with an allowed algorithm,
name the configured issuer and this client as audience (and as `azp` when there are several),
be unexpired (with `leeway_seconds`), and carry the nonce of this sign-in, which is then used up:
a token whose nonce was seen before is refused. authlib does the OAuth 2.0 exchange, joserfc the
JOSE work.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from dataclasses import dataclass

import requests
from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from wobble.core.config import ROLES, SignIn
from wobble.core.errors import WobbleError
from wobble.review.roles import User

HTTP_TIMEOUT = 10  # seconds for each call to the provider


class SignInError(WobbleError):
    """Sign-in refused: the message says why in one line (no token or claim values in it)."""


@dataclass(frozen=True)
class Pending:
    """One sign-in in flight: kept server-side from `begin` until the browser comes back."""

    state: str
    nonce: str
    code_verifier: str
    started: float


class UsedNonces:
    """Nonces already accepted, remembered until their token would have expired anyway.

    In memory: enough for one server process; the review app may pass one kept in its database.
    """

    def __init__(self) -> None:
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def use(self, nonce: str, until: float) -> bool:
        """Record `nonce`; False when it was already used."""
        now = time.time()
        with self._lock:
            self._seen = {n: t for n, t in self._seen.items() if t > now}
            if nonce in self._seen:
                return False
            self._seen[nonce] = until
            return True


class OIDCClient:
    """The relying party: discovery, JWKS, the code flow and ID token validation."""

    def __init__(self, settings: SignIn, *, secret: str | None = None, nonces: UsedNonces | None = None):
        self.settings = settings
        self.secret = secret if secret is not None else os.environ.get(settings.client_secret_env, "")
        if not self.secret:
            raise SignInError(f"sign_in: environment variable {settings.client_secret_env} must hold the "
                              "OpenID Connect client secret")
        self.nonces = nonces or UsedNonces()
        self._meta: dict | None = None
        self._keys: KeySet | None = None
        self._lock = threading.Lock()

    # -- discovery -----------------------------------------------------------------------------

    def _get_json(self, url: str, what: str) -> dict:
        try:
            resp = requests.get(url, timeout=HTTP_TIMEOUT)
            resp.raise_for_status()
            return resp.json()
        except (requests.RequestException, ValueError) as exc:
            raise SignInError(f"the identity provider's {what} could not be read ({type(exc).__name__})") from None

    @property
    def metadata(self) -> dict:
        """The provider's discovery document; its issuer must be the configured one, exactly."""
        with self._lock:
            if self._meta is None:
                meta = self._get_json(self.settings.issuer.rstrip("/") + "/.well-known/openid-configuration",
                                      "discovery document")
                if meta.get("issuer") != self.settings.issuer:
                    raise SignInError("the identity provider's discovery document names another issuer")
                for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
                    if not meta.get(key):
                        raise SignInError(f"the identity provider's discovery document has no {key}")
                self._meta = meta
            return self._meta

    def keys(self, kid: str | None = None) -> KeySet:
        """The provider's signing keys; fetched again (once) when a token names an unknown key id."""
        known = self._keys is not None and (kid is None or any(k.kid == kid for k in self._keys.keys))
        if not known:
            self._keys = KeySet.import_key_set(self._get_json(self.metadata["jwks_uri"], "JWKS"))
        return self._keys

    # -- the code flow -------------------------------------------------------------------------

    def _session(self, **kw) -> OAuth2Session:
        s = self.settings
        return OAuth2Session(s.client_id, self.secret, scope=" ".join(s.scopes), redirect_uri=s.redirect_url,
                             token_endpoint_auth_method=s.token_auth, code_challenge_method="S256", **kw)

    def begin(self) -> tuple[str, Pending]:
        """The URL to send the browser to, and the pending sign-in to keep until it returns."""
        pending = Pending(secrets.token_urlsafe(24), secrets.token_urlsafe(24), secrets.token_urlsafe(48),
                          time.time())
        url, _ = self._session().create_authorization_url(
            self.metadata["authorization_endpoint"], state=pending.state, nonce=pending.nonce,
            code_verifier=pending.code_verifier)
        assert create_s256_code_challenge(pending.code_verifier) in url  # PKCE is on
        return url, pending

    def complete(self, pending: Pending, *, code: str, state: str) -> dict:
        """Exchange the code and validate the ID token; the claims of the signed-in person."""
        if not secrets.compare_digest(state.encode(), pending.state.encode()):
            raise SignInError("the sign-in state does not match (start again from the sign-in page)")
        try:
            token = self._session(state=pending.state).fetch_token(
                self.metadata["token_endpoint"], code=code, code_verifier=pending.code_verifier,
                timeout=HTTP_TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - the provider's refusal, or the network: one line
            raise SignInError(f"the identity provider refused the sign-in code ({type(exc).__name__})") from None
        id_token = token.get("id_token")
        if not id_token:
            raise SignInError("the identity provider returned no ID token (is 'openid' among the scopes?)")
        return self.validate_id_token(id_token, nonce=pending.nonce)

    def validate_id_token(self, id_token: str, *, nonce: str) -> dict:
        """The token's claims when it is valid for this client and this sign-in; else SignInError."""
        s = self.settings
        try:
            header = jws.extract_compact(id_token.encode()).protected
        except (JoseError, ValueError, UnicodeError):
            raise SignInError("the ID token is not a signed JWT") from None
        try:
            token = jwt.decode(id_token, self.keys(header.get("kid")), algorithms=s.algorithms)
        except JoseError as exc:
            raise SignInError(f"the ID token's signature is not valid ({exc.error})") from None
        except ValueError:
            raise SignInError("the ID token is not a signed JWT") from None
        claims = token.claims
        registry = jwt.JWTClaimsRegistry(
            leeway=s.leeway_seconds, iss={"essential": True, "value": s.issuer},
            aud={"essential": True, "value": s.client_id}, sub={"essential": True},
            exp={"essential": True}, iat={"essential": True}, nonce={"essential": True, "value": nonce})
        try:
            registry.validate(claims)
        except JoseError as exc:
            raise SignInError(f"the ID token was refused: {_why(exc)}") from None
        aud = claims["aud"]
        if isinstance(aud, list) and len(aud) > 1 and claims.get("azp") != s.client_id:
            raise SignInError("the ID token was refused: issued to another client (azp)")
        if not self.nonces.use(nonce, float(claims["exp"]) + s.leeway_seconds):
            raise SignInError("the ID token was refused: its nonce was used before (a replayed sign-in)")
        return claims


def _why(exc: JoseError) -> str:
    """A JOSE claim error in words (never the claim's value)."""
    name = type(exc).__name__
    claim = getattr(exc, "claim", None) or ""
    if name == "ExpiredTokenError":
        return "it has expired"
    if name == "InvalidTokenError":
        return "it is not yet valid"
    if claim == "iss":
        return "it was issued by another provider (iss)"
    if claim == "aud":
        return "it was issued to another client (aud)"
    if claim == "nonce":
        return "its nonce is not this sign-in's"
    return f"claim {claim or '?'} is missing or wrong"


def _claim_values(claims: dict, path: str | None) -> list[str]:
    """The values at a dotted path, lists flattened: 'nhsid_nrbac_roles.role_code' → every role code."""
    if not path:
        return []
    found: list = [claims]
    for part in path.split("."):
        nxt: list = []
        for item in found:
            items = item if isinstance(item, list) else [item]
            nxt += [i[part] for i in items if isinstance(i, dict) and part in i]
        found = nxt
    flat: list[str] = []
    for v in found:
        flat += [str(x) for x in v] if isinstance(v, list) else [str(v)]
    return flat


# The roles a user may hold at once resolve to the one with most rights over identities, so that a
# clinician who is also in an analysts' group still signs in as a clinician of their team.
_PRECEDENCE = ("team_lead", "clinician", "team_member", "analyst", "auditor")


def user_from_claims(settings: SignIn, claims: dict) -> User:
    """The wobble user for validated claims: from `users` (by `sub`), else from the role and team claims."""
    sub = str(claims["sub"])
    name = str(claims.get(settings.name_claim) or claims.get("preferred_username") or sub)
    local = settings.users.get(sub)
    if local is not None:
        return User(sub=sub, name=local.name or name, role=local.role, teams=tuple(local.teams))
    roles = {settings.role_map.get(v, v) for v in _claim_values(claims, settings.role_claim)} & set(ROLES)
    teams = tuple(sorted({settings.team_map.get(v, v) for v in _claim_values(claims, settings.team_claim)}))
    if not roles:
        raise SignInError("signed in, but no wobble role is given to this account: ask the data team")
    role = next(r for r in _PRECEDENCE if r in roles)
    if role in ("team_member", "clinician", "team_lead") and not teams:
        raise SignInError("signed in, but no team is given to this account: ask the data team")
    return User(sub=sub, name=name, role=role, teams=teams)

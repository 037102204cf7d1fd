"""A small OpenID Connect provider for the tests, served over HTTP on 127.0.0.1 from a thread.

It has what wobble's client needs from a trust's provider: a discovery document, a JWKS, an
authorize endpoint (the authorization-code flow with PKCE; it signs in `login_as` without a
password page) and a token endpoint (client secret, Basic or in the form) that issues RS256 ID
tokens signed with joserfc. For the refusal tests, `next_token` changes the next ID token's
claims, and `tamper_next` breaks its signature.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlparse

from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey


class Provider:
    """A running provider: `issuer` is its URL; `users` maps a subject to its extra claims."""

    def __init__(self, *, client_id: str, client_secret: str, redirect_uris: list[str],
                 users: dict[str, dict]):
        self.client_id, self.client_secret = client_id, client_secret
        self.redirect_uris = list(redirect_uris)
        self.users = users
        self.key = RSAKey.generate_key(2048, parameters={"kid": "test-1", "use": "sig", "alg": "RS256"})
        self.login_as: str | None = None
        self.next_token: dict = {}
        self.tamper_next = False
        self.codes: dict[str, dict] = {}
        self.requests: list[str] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.issuer = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> Provider:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- what the endpoints serve ----------------------------------------------------------

    def discovery(self) -> dict:
        return {"issuer": self.issuer, "authorization_endpoint": f"{self.issuer}/authorize",
                "token_endpoint": f"{self.issuer}/token", "jwks_uri": f"{self.issuer}/jwks",
                "response_types_supported": ["code"], "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"], "code_challenge_methods_supported": ["S256"],
                "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"]}

    def jwks(self) -> dict:
        return KeySet([self.key]).as_dict(private=False)

    def id_token(self, sub: str, nonce: str, overrides: dict | None = None) -> str:
        """An ID token for `sub`, as the token endpoint issues it (with any claims overridden)."""
        now = int(time.time())
        claims = {"iss": self.issuer, "sub": sub, "aud": self.client_id, "iat": now, "exp": now + 300,
                  "nonce": nonce, "auth_time": now, **self.users.get(sub, {}), **(overrides or {})}
        token = jwt.encode({"alg": "RS256", "kid": self.key.kid}, claims, self.key)
        if self.tamper_next:
            self.tamper_next = False
            head, body, sig = token.split(".")
            # another signer's signature on the same header and claims: well-formed, not valid
            token = ".".join((head, body, sig[:-6] + ("AAAAAA" if not sig.endswith("AAAAAA") else "BBBBBB")))
        return token

    def authorize(self, query: dict[str, str]) -> tuple[int, str]:
        """(status, Location or error) for an authorize request."""
        if query.get("client_id") != self.client_id or query.get("redirect_uri") not in self.redirect_uris:
            return 400, "unknown client or redirect_uri"
        if query.get("response_type") != "code" or query.get("code_challenge_method") != "S256":
            return 400, "code flow with PKCE (S256) only"
        user = query.get("login_hint") or self.login_as
        if user not in self.users:
            return 403, "no such user"
        code = secrets.token_urlsafe(16)
        self.codes[code] = {"sub": user, "nonce": query.get("nonce", ""), "redirect_uri": query["redirect_uri"],
                            "challenge": query.get("code_challenge", ""), "at": time.time()}
        sep = "&" if "?" in query["redirect_uri"] else "?"
        return 302, query["redirect_uri"] + sep + urlencode({"code": code, "state": query.get("state", "")})

    def token(self, form: dict[str, str], auth_header: str | None) -> tuple[int, dict]:
        cid, secret = form.get("client_id"), form.get("client_secret")
        if auth_header and auth_header.startswith("Basic "):
            cid, _, secret = base64.b64decode(auth_header[6:]).decode().partition(":")
        if cid != self.client_id or secret != self.client_secret:
            return 401, {"error": "invalid_client"}
        grant = self.codes.pop(form.get("code", ""), None)  # a code works once
        if grant is None or form.get("grant_type") != "authorization_code" \
                or form.get("redirect_uri") != grant["redirect_uri"] or time.time() - grant["at"] > 60:
            return 400, {"error": "invalid_grant"}
        verifier = form.get("code_verifier", "")
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        if challenge != grant["challenge"]:
            return 400, {"error": "invalid_grant", "error_description": "PKCE"}
        overrides, self.next_token = self.next_token, {}
        return 200, {"access_token": secrets.token_urlsafe(16), "token_type": "Bearer", "expires_in": 300,
                     "id_token": self.id_token(grant["sub"], grant["nonce"], overrides)}


def _handler(provider: Provider) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # quiet
            pass

        def _json(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802
            url = urlparse(self.path)
            provider.requests.append(url.path)
            if url.path == "/.well-known/openid-configuration":
                return self._json(200, provider.discovery())
            if url.path == "/jwks":
                return self._json(200, provider.jwks())
            if url.path == "/authorize":
                status, where = provider.authorize({k: v[0] for k, v in parse_qs(url.query).items()})
                if status != 302:
                    return self._json(status, {"error": where})
                self.send_response(302)
                self.send_header("Location", where)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            return self._json(404, {"error": "not found"})

        def do_POST(self) -> None:  # noqa: N802
            provider.requests.append(urlparse(self.path).path)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
            if urlparse(self.path).path != "/token":
                return self._json(404, {"error": "not found"})
            form = {k: v[0] for k, v in parse_qs(body).items()}
            status, out = provider.token(form, self.headers.get("Authorization"))
            return self._json(status, out)

    return Handler

"""Sign-in with OpenID Connect against a real provider on loopback (tests/oidc_provider.py): the
code flow works, and expired, wrongly addressed, wrongly issued, tampered and replayed ID tokens are
refused, each with one line saying why."""

from __future__ import annotations

import time
from urllib.parse import parse_qs, urlparse

import pytest
import requests
from oidc_provider import Provider

from wobble.core.config import SignIn
from wobble.review.oidc import OIDCClient, SignInError, user_from_claims

SECRET = "test-client-secret-0123456789"
REDIRECT = "http://127.0.0.1:9/callback"
USERS = {"alice": {"name": "Alice Clinician", "groups": ["wobble-T01"], "wobble_role": "clinician"},
         "bob": {"name": "Bob Member", "groups": ["wobble-T02"], "wobble_role": "member"},
         "carol": {"name": "Carol", "groups": [], "wobble_role": "member"}}


@pytest.fixture(scope="module")
def provider():
    with Provider(client_id="wobble", client_secret=SECRET, redirect_uris=[REDIRECT], users=USERS) as p:
        yield p


def _settings(provider: Provider, **kw) -> SignIn:
    return SignIn(issuer=provider.issuer, client_id="wobble", redirect_url=REDIRECT, team_claim="groups",
                  role_claim="wobble_role", team_map={"wobble-T01": "T01", "wobble-T02": "T02"},
                  role_map={"member": "team_member"}, **kw)


def _client(provider: Provider, **kw) -> OIDCClient:
    return OIDCClient(_settings(provider, **kw), secret=SECRET)


def _sign_in(client: OIDCClient, provider: Provider, user: str = "alice"):
    """The browser's part: follow the authorize URL to the redirect, as a user agent would."""
    url, pending = client.begin()
    provider.login_as = user
    resp = requests.get(url, allow_redirects=False, timeout=5)
    assert resp.status_code == 302, resp.text
    back = parse_qs(urlparse(resp.headers["Location"]).query)
    return pending, back["code"][0], back["state"][0]


def test_the_code_flow_signs_in_with_role_and_team(provider):
    client = _client(provider)
    url, _ = client.begin()
    q = parse_qs(urlparse(url).query)
    assert q["response_type"] == ["code"] and q["code_challenge_method"] == ["S256"]
    assert {"state", "nonce", "code_challenge"} <= set(q) and "code_verifier" not in q
    pending, code, state = _sign_in(client, provider)
    claims = client.complete(pending, code=code, state=state)
    assert claims["sub"] == "alice" and claims["iss"] == provider.issuer
    user = user_from_claims(client.settings, claims)
    assert (user.name, user.role, user.teams) == ("Alice Clinician", "clinician", ("T01",))
    assert {"/.well-known/openid-configuration", "/jwks", "/authorize", "/token"} <= set(provider.requests)


def test_the_client_secret_can_go_in_the_form(provider):
    client = _client(provider, token_auth="client_secret_post")
    pending, code, state = _sign_in(client, provider, "bob")
    assert client.complete(pending, code=code, state=state)["sub"] == "bob"


@pytest.mark.parametrize(("change", "message"), [
    ({"exp": int(time.time()) - 3600, "iat": int(time.time()) - 7200}, "it has expired"),
    ({"aud": "another-client"}, r"issued to another client \(aud\)"),
    ({"iss": "https://evil.example"}, r"issued by another provider \(iss\)"),
    ({"nonce": "not-this-sign-in"}, "its nonce is not this sign-in's"),
])
def test_wrong_tokens_are_refused(provider, change, message):
    client = _client(provider)
    pending, code, state = _sign_in(client, provider)
    provider.next_token = change
    with pytest.raises(SignInError, match=message):
        client.complete(pending, code=code, state=state)


def test_a_tampered_signature_is_refused(provider):
    client = _client(provider)
    pending, code, state = _sign_in(client, provider)
    provider.tamper_next = True
    with pytest.raises(SignInError, match="signature is not valid"):
        client.complete(pending, code=code, state=state)


def test_a_token_signed_by_another_key_is_refused(provider):
    from joserfc import jwt
    from joserfc.jwk import RSAKey

    client = _client(provider)
    other = RSAKey.generate_key(2048, parameters={"kid": "test-1"})  # same key id, another key
    now = int(time.time())
    forged = jwt.encode({"alg": "RS256", "kid": "test-1"}, {"iss": provider.issuer, "aud": "wobble", "sub": "alice",
                                                            "iat": now, "exp": now + 300, "nonce": "n-1"}, other)
    with pytest.raises(SignInError, match="signature is not valid"):
        client.validate_id_token(forged, nonce="n-1")
    with pytest.raises(SignInError, match="not a signed JWT"):
        client.validate_id_token("not.a-token", nonce="n-1")


def test_a_replayed_nonce_is_refused(provider):
    client = _client(provider)
    pending, code, state = _sign_in(client, provider)
    token = provider.id_token("alice", pending.nonce)
    assert client.validate_id_token(token, nonce=pending.nonce)["sub"] == "alice"
    with pytest.raises(SignInError, match="nonce was used before"):
        client.validate_id_token(token, nonce=pending.nonce)
    # the whole sign-in replayed: the provider's new token carries the used nonce
    with pytest.raises(SignInError, match="nonce was used before"):
        client.complete(pending, code=code, state=state)
    # and the same code once more is refused by the provider (codes work once)
    with pytest.raises(SignInError, match="refused the sign-in code"):
        client.complete(pending, code=code, state=state)


def test_a_wrong_state_is_refused(provider):
    client = _client(provider)
    pending, code, _ = _sign_in(client, provider)
    with pytest.raises(SignInError, match="state does not match"):
        client.complete(pending, code=code, state="forged")


def test_a_discovery_document_naming_another_issuer_is_refused(provider):
    settings = SignIn(issuer=provider.issuer + "/", client_id="wobble", redirect_url=REDIRECT)
    with pytest.raises(SignInError, match="names another issuer"):
        OIDCClient(settings, secret=SECRET).begin()


def test_without_a_secret_it_says_which_variable(provider, monkeypatch):
    monkeypatch.delenv("WOBBLE_OIDC_CLIENT_SECRET", raising=False)
    with pytest.raises(SignInError, match="WOBBLE_OIDC_CLIENT_SECRET must hold"):
        OIDCClient(_settings(provider))


def test_roles_and_teams_from_claims_or_the_local_mapping(provider):
    s = _settings(provider, users={"carol": {"role": "auditor", "name": "Carol Auditor"}})
    assert user_from_claims(s, {"sub": "carol", "name": "C"}).role == "auditor"
    with pytest.raises(SignInError, match="no team is given"):
        user_from_claims(s, {"sub": "dave", "wobble_role": "clinician", "groups": []})
    with pytest.raises(SignInError, match="no wobble role"):
        user_from_claims(s, {"sub": "erin", "groups": ["wobble-T01"]})
    # CIS2-style: a list of role objects; the clinician role wins over an analyst one
    cis2 = SignIn(issuer=provider.issuer, client_id="wobble", redirect_url=REDIRECT,
                  role_claim="nhsid_nrbac_roles.role_code", team_claim="nhsid_nrbac_roles.org_code",
                  role_map={"S8000:G8000:R8000": "clinician", "S8000:G8000:R8001": "analyst"},
                  team_map={"Y12345": "T01"})
    user = user_from_claims(cis2, {"sub": "555", "name": "Dr A", "nhsid_nrbac_roles": [
        {"role_code": "S8000:G8000:R8001", "org_code": "RX1"},
        {"role_code": "S8000:G8000:R8000", "org_code": "Y12345"}]})
    assert (user.role, user.teams) == ("clinician", ("RX1", "T01"))

#!/usr/bin/env python3
"""Writes the hand-made seeds of fuzz/corpus/* (named seed-*, beside what libFuzzer keeps).

Needs the `cryptography` package (in .deps/venv, brought by scripts/deps.sh):
    .deps/venv/bin/python fuzz/make_seeds.py
"""
import base64
import hashlib
import json
import os
import re

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = os.path.join(ROOT, "tests/fixtures/keys")
CORPUS = os.path.join(ROOT, "fuzz/corpus")
ISS = "https://as.fuzz.test"  # as in fuzz_targets/token.rs
AUD = "https://mcp.fuzz.test/db"
NOW = 1_800_000_000


def b64(b):
    if isinstance(b, str):
        b = b.encode()
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def key(kid):
    with open(os.path.join(KEYS, f"{kid}.pem"), "rb") as f:
        return serialization.load_pem_private_key(f.read(), password=None)


def sign(kid, header, claims):
    h = header if isinstance(header, str) else json.dumps(header, separators=(",", ":"))
    c = claims if isinstance(claims, str) else json.dumps(claims, separators=(",", ":"))
    inp = f"{b64(h)}.{b64(c)}".encode()
    k = key(kid)
    if kid.startswith("rs"):
        sig = k.sign(inp, padding.PKCS1v15(), hashes.SHA256())
    elif kid.startswith("es"):
        r, s = decode_dss_signature(k.sign(inp, ec.ECDSA(hashes.SHA256())))
        sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    else:
        sig = k.sign(inp)
    return f"{inp.decode()}.{b64(sig)}"


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, f"seed-{name}"), "wb") as f:
        f.write(data)


def claims(**extra):
    c = {"iss": ISS, "sub": "agent-1", "client_id": "agent-1", "aud": AUD, "jti": "jti-1",
         "iat": NOW - 5, "exp": NOW + 300, "scope": "mcp.tool:db.read extra"}
    c.update(extra)
    return c


def token_seeds():
    algs = {"eddsa-1": "EdDSA", "es256-1": "ES256", "rs256-1": "RS256"}
    for kid, alg in algs.items():
        hdr = {"alg": alg, "typ": "at+jwt", "kid": kid}
        write("token", f"valid-{kid}", b"\x00" + sign(kid, hdr, claims()).encode())
    hdr = {"alg": "EdDSA", "typ": "at+jwt", "kid": "eddsa-1"}
    write("token", "act-aud-list", b"\x00" + sign("eddsa-1", hdr, claims(
        act={"sub": "agent-7", "act": {"sub": "orchestrator"}}, aud=[AUD, "x"], nbf=NOW)).encode())
    write("token", "no-kid", b"\x00" + sign("es256-1", {"alg": "ES256", "typ": "application/at+jwt"}, claims()).encode())
    write("token", "dup-claim", b"\x00" + sign("eddsa-1", hdr, '{"sub":"mallory",' + json.dumps(claims())[1:]).encode())
    write("token", "expired", b"\x00" + sign("eddsa-1", hdr, claims(exp=NOW - 100)).encode())
    write("token", "alg-none", b"\x00" + f"{b64(json.dumps({'alg': 'none', 'typ': 'at+jwt'}))}.{b64(json.dumps(claims()))}.".encode())
    write("token", "jwe", b"\x00" + f"{b64(json.dumps({'alg': 'RSA-OAEP', 'enc': 'A256GCM'}))}.a.b.c.d".encode())
    write("token", "structured-1", bytes([1]) + hashlib.sha256(b"1").digest() * 2)
    write("token", "structured-2", bytes([1]) + bytes(range(0, 256, 3)))
    with open(os.path.join(KEYS, "keys.json")) as f:
        jwks = json.load(f)
    for k in jwks["keys"]:
        for p in ["d", "p", "q", "dp", "dq", "qi"]:
            k.pop(p, None)
    write("token", "jwks", bytes([2]) + json.dumps(jwks).encode() + hashlib.sha256(b"2").digest())


def strip_toml_comments(text):
    out = []
    for line in text.splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        out.append(re.sub(r'\s+#[^"]*$', "", line))
    return "\n".join(out) + "\n"


BASE = """
[server]
broker_socket = "/run/fuzz/broker.sock"
admin_socket = "/run/fuzz/admin.sock"

[journal]
path = "/var/lib/fuzz/journal.db"
key_file = "journal.key"

[tokens]
leeway = "5s"

[broker]
revoke_backoff_initial = "200ms"
revoke_backoff_max = "1s"
provider_timeout = "3s"
end_task_wait = "2s"

[[issuer]]
url = "https://as.example.test"
min_refresh_interval = "1s"

[attribution]
require_owner = true
clients = { "agent-1" = "alice@example.com", "agent-noscope" = "bob@example.com" }

{provider}

[[grant]]
name = "orders-db-read"
provider = "pg"
scopes = ["mcp.tool:postgres.read"]
max_ttl = "10m"
params = {params}

[[workload]]
name = "postgres-mcp"
uid = 1000
audience = "https://mcp.example.test/postgres"
grants = ["orders-db-read"]
"""


def config_seeds():
    with open(os.path.join(ROOT, "config/credbroker.toml")) as f:
        write("config", "credbroker-toml", strip_toml_comments(f.read()))
    variants = {
        # As tests/support/daemon.rs base_config (its test provider is not built in).
        "base-test-provider": ('[[provider]]\nname = "pg"\ntype = "test"\nstate_dir = "/tmp/provider"',
                               '{ label = "orders-{{owner}}", items = ["orders", "customers"] }'),
        "base-vault": ('[[provider]]\nname = "pg"\ntype = "vault"\naddress = "http://127.0.0.1:8200"\n'
                       'token_credential = "vault-token"\ntimeout = "2s"',
                       '{ kind = "dynamic", path = "database/creds/orders-{owner}", public = ["username"] }'),
        "base-vault-approle": ('[[provider]]\nname = "pg"\ntype = "vault"\naddress = "https://vault.test:8200"\n'
                               'approle = { role_id = "r", secret_id_file = "vault-secret-id" }\nscope_role = "scoped"\n'
                               'scope_policies = ["p"]',
                               '{ kind = "token", policies = ["orders-reader"], num_uses = 0 }'),
        "base-aws": ('[[provider]]\nname = "pg"\ntype = "aws"\nregion = "eu-west-1"\n'
                     'sts_endpoint_url = "http://127.0.0.1:5000"\nrevocation = "deny-session"',
                     '{ role_arn = "arn:aws:iam::123456789012:role/mcp-s3-read", duration = "1h", '
                     'role_session_name = "{owner}", session_policy = { Version = "2012-10-17", Statement = [ '
                     '{ Effect = "Allow", Action = ["s3:GetObject"], Resource = ["arn:aws:s3:::reports/{owner}/*"] } ] } }'),
        "base-github": ('[[provider]]\nname = "pg"\ntype = "github"\napp_id = 4242\n'
                        'private_key_credential = "github-app-key"\napi_url = "http://127.0.0.1:9999/api/v3"\nmax_retries = 2',
                        '{ owner = "acme", repositories = ["notes", "docs"], permissions = { issues = "write" } }'),
        "base-github-file": ('[[provider]]\nname = "pg"\ntype = "github"\napp_id = 4242\n'
                             'private_key_file = "github-app.pem"',
                             '{ owner = "acme", repositories = ["{sub}"], permissions = { contents = "read" } }'),
    }
    for name, (provider, params) in variants.items():
        write("config", name, BASE.replace("{provider}", provider).replace("{params}", params))
    write("config", "minimal", '[server]\nbroker_socket = "/b"\nadmin_socket = "/a"\n'
          '[journal]\npath = "/j"\nkey_credential = "journal-key"\n'
          '[audit]\nhead_key_credential = "audit-head-key"\nretention = "30d"\n'
          '[metrics]\nlisten = "unix:/run/m.sock"\n'
          '[[issuer]]\nurl = "https://as.test/tenant/1"\nmetadata = "oidc"\njwks_file = "jwks.json"\n'
          'algorithms = ["ES256"]\n')


def other_seeds():
    for i in range(4):
        write("template", f"bytes-{i}", hashlib.sha512(f"template-{i}".encode()).digest() * (i + 1))
    write("template", "text", b"\x01\x02db/{sub}/{task_id}\x00{{\"Owner\":\"{owner}\"}}\x00" + bytes(range(64)))
    write("journal", "empty", b"")
    for i in range(4):
        write("journal", f"bytes-{i}", hashlib.sha512(f"journal-{i}".encode()).digest()[: 16 * (i + 1)])


if __name__ == "__main__":
    token_seeds()
    config_seeds()
    other_seeds()

"""The official MCP Python SDK's client (PyPI `mcp` 2.x) doing the whole OAuth flow by itself,
given nothing but the MCP server's URL: RFC 9728 discovery from the 401, RFC 8414 metadata,
client registration, the authorization-code flow with PKCE and resource indicators, and the
SDK's own step-up when a tool answers 403 insufficient_scope.

    oauth_client.py URL MODE [--client-id ID] [--redirect-uri URI] [--tls-cert PEM --tls-key PEM]

MODE is how the client gets a client_id:
  preregistered  --client-id, registered at the authorization server beforehand (public client)
  dcr            RFC 7591 dynamic registration at the server's registration_endpoint
  cimd           a Client ID Metadata Document this script serves itself over https on loopback
                 (--tls-cert/--tls-key, a certificate for 127.0.0.1); its URL is the client_id

There is no browser: the redirect handler follows the authorization URL with an HTTP client that
keeps cookies (the test authorization server logs its user in and consents by itself) and stops
at the redirect_uri, whose code, state and iss go to the callback handler; nothing listens there.

Prints one JSON object: tools (listed before the step-up), query, write, authorizations (the
authorization URLs' scope and resource, one per authorization), tokens (each token's scope and
aud), registration (how the client_id was obtained), mcp_responses (every response of the MCP
endpoint: status and WWW-Authenticate) and, for cimd, document_fetches.
"""

import argparse
import asyncio
import base64
import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urljoin, urlparse

import httpx2
from mcp import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientInformationFull, OAuthClientMetadata, OAuthToken


class MemoryStorage:
    """Token storage in memory, recording what the SDK stores."""

    def __init__(self, client_info=None):
        self.tokens = None
        self.client_info = client_info
        self.stored_tokens = []
        self.stored_clients = []

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens
        self.stored_tokens.append(tokens)

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client_info

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client_info = client_info
        self.stored_clients.append(client_info)


class HeadlessBrowser:
    """Follows an authorization URL to the redirect_uri, keeping cookies across authorizations."""

    def __init__(self, redirect_uri):
        self.redirect_uri = redirect_uri
        self.http = httpx2.AsyncClient(follow_redirects=False)
        self.authorizations = []
        self.result = None

    async def redirect(self, authorization_url: str) -> None:
        q = parse_qs(urlparse(authorization_url).query)
        self.authorizations.append({"scope": q.get("scope", [None])[0], "resource": q.get("resource", [None])[0]})
        url = authorization_url
        for _ in range(10):
            if url.startswith(self.redirect_uri):
                params = {k: v[0] for k, v in parse_qs(urlparse(url).query).items()}
                if "code" not in params:
                    raise RuntimeError(f"authorization refused: {params}")
                self.result = AuthorizationCodeResult(code=params["code"], state=params.get("state"), iss=params.get("iss"))
                return
            r = await self.http.get(url)
            if r.status_code not in (302, 303, 307):
                raise RuntimeError(f"authorization stopped at {url}: {r.status_code} {r.text[:300]}")
            url = urljoin(url, r.headers["location"])
        raise RuntimeError("too many redirects")

    async def callback(self) -> AuthorizationCodeResult:
        result, self.result = self.result, None
        return result


def serve_metadata_document(cert, key, redirect_uri):
    """Serves this client's metadata document at https://127.0.0.1:PORT/client.json."""
    fetches = []
    doc = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            fetches.append(self.path)
            body = json.dumps(doc).encode() if self.path == "/client.json" else b"{}"
            self.send_response(200 if self.path == "/client.json" else 404)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    server.socket = tls.wrap_socket(server.socket, server_side=True)
    url = f"https://127.0.0.1:{server.server_address[1]}/client.json"
    doc.update({
        "client_id": url,
        "client_name": "credbroker test client (Python SDK)",
        "redirect_uris": [redirect_uri],
        "grant_types": ["authorization_code"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "none",
        "application_type": "native",
    })
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return url, fetches


def claims(jwt):
    try:
        return json.loads(base64.urlsafe_b64decode(jwt.split(".")[1] + "=="))
    except Exception:  # an opaque token
        return {}


async def main(args):
    out = {}
    metadata = OAuthClientMetadata(
        client_name="credbroker test client (Python SDK)",
        redirect_uris=[args.redirect_uri],
        grant_types=["authorization_code"],
        response_types=["code"],
        token_endpoint_auth_method="none",
    )
    storage = MemoryStorage()
    metadata_url, fetches = None, None
    if args.mode == "preregistered":
        storage.client_info = OAuthClientInformationFull(
            client_id=args.client_id, redirect_uris=[args.redirect_uri], token_endpoint_auth_method="none"
        )
    elif args.mode == "cimd":
        metadata_url, fetches = serve_metadata_document(args.tls_cert, args.tls_key, args.redirect_uri)
    browser = HeadlessBrowser(args.redirect_uri)
    auth = OAuthClientProvider(
        server_url=args.url,
        client_metadata=metadata,
        storage=storage,
        redirect_handler=browser.redirect,
        callback_handler=browser.callback,
        client_metadata_url=metadata_url,
    )
    responses = []

    async def on_response(r):
        if str(r.request.url) == args.url:
            responses.append({"status": r.status_code, "www_authenticate": r.headers.get("www-authenticate")})

    async with httpx2.AsyncClient(auth=auth, event_hooks={"response": [on_response]}) as http:
        async with Client(streamable_http_client(args.url, http_client=http)) as client:
            out["tools"] = [t.name for t in (await client.list_tools()).tools]
            r = await client.call_tool("query", {"sql": "select 1"})
            out["query"] = r.content[0].text
            try:
                r = await client.call_tool("write", {"row": "r"})
                out["write"] = r.content[0].text if not r.is_error else f"error: {r.content[0].text}"
            except Exception as e:  # the SDK raises when its step-up fails
                out["write"] = f"refused: {type(e).__name__}: {e}"
            out["tools_after"] = [t.name for t in (await client.list_tools()).tools]
    await browser.http.aclose()
    out["authorizations"] = browser.authorizations
    out["tokens"] = [{"scope": t.scope, "aud": claims(t.access_token).get("aud")} for t in storage.stored_tokens]
    client_id = storage.client_info.client_id if storage.client_info else None
    if args.mode == "preregistered":
        registration = "preregistered" if not storage.stored_clients else "replaced"
    elif metadata_url is not None and client_id == metadata_url:
        registration = "cimd"
    elif storage.stored_clients and storage.stored_clients[0].client_id_issued_at is not None:
        registration = "dcr"
    else:
        registration = "unknown"
    out["registration"] = {"mode": registration, "client_id": client_id}
    out["mcp_responses"] = responses
    if fetches is not None:
        out["document_fetches"] = len(fetches)
    print(json.dumps(out))


p = argparse.ArgumentParser()
p.add_argument("url")
p.add_argument("mode", choices=["preregistered", "dcr", "cimd"])
p.add_argument("--client-id")
p.add_argument("--redirect-uri", default="http://127.0.0.1/callback")
p.add_argument("--tls-cert")
p.add_argument("--tls-key")
a = p.parse_args()
if a.mode == "preregistered" and not a.client_id:
    p.error("preregistered needs --client-id")
if a.mode == "cimd" and not (a.tls_cert and a.tls_key):
    p.error("cimd needs --tls-cert and --tls-key")
asyncio.run(main(a))

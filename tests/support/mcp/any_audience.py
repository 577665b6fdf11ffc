"""A half-protected MCP endpoint: it asks for a bearer token and publishes RFC 9728 metadata,
but accepts any token at all (it never checks the audience). `credbroker probe --token` must
report it as a confused deputy.

    any_audience.py PORT ISSUER
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT = int(sys.argv[1])
ISSUER = sys.argv[2]
BASE = f"http://127.0.0.1:{PORT}"


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def send(self, status, body, headers=()):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path.startswith("/.well-known/oauth-protected-resource"):
            self.send(200, {"resource": f"{BASE}/mcp", "authorization_servers": [ISSUER]})
        else:
            self.send(404, {})

    def do_POST(self):
        length = int(self.headers.get("content-length", "0"))
        self.rfile.read(length)
        if not self.headers.get("authorization", "").startswith("Bearer "):
            meta = f"{BASE}/.well-known/oauth-protected-resource/mcp"
            self.send(401, {}, [("www-authenticate", f'Bearer resource_metadata="{meta}"')])
            return
        self.send(200, {"jsonrpc": "2.0", "id": 1, "result": {"tools": [{"name": "query"}]}})


ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()

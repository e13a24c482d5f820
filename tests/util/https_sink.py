"""An HTTPS endpoint for deliver's TLS tests: answers 200 to a POST that
carries the expected Authorization value (401 otherwise) and appends each
accepted body, one per line, to a file; `/redirect?to=URL` answers 307 to
URL.

    python3 https_sink.py PORT CERT KEY EXPECTED_AUTHORIZATION OUT_FILE [LOOKUP_AUTHORIZATION]

A GET (an enrichment lookup) that carries LOOKUP_AUTHORIZATION answers
{"country": "NL"}; 401 otherwise.
"""
import http.server
import ssl
import sys
import threading

port, cert, key, expected, out = sys.argv[1:6]
lookup = sys.argv[6] if len(sys.argv) > 6 else None
lock = threading.Lock()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path.startswith("/redirect?to="):
            self.send_response(307)
            self.send_header("Location", self.path[len("/redirect?to="):])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        ok = self.headers.get("Authorization") == expected
        if ok:
            with lock, open(out, "ab") as f:
                f.write(body.rstrip(b"\n") + b"\n")
        self.send_response(200 if ok else 401)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self):
        ok = lookup is not None and self.headers.get("Authorization") == lookup
        body = b'{"country": "NL"}' if ok else b""
        self.send_response(200 if ok else 401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", int(port)), Handler)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
server.socket = ctx.wrap_socket(server.socket, server_side=True)
print("ready", flush=True)
server.serve_forever()

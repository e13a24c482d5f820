"""A tiny REST endpoint for the demo: prints every POST it receives (the
Kafka headers kbridge's deliver role sends, and the body) and answers 200.

usage: demo-sink.py [PORT]   (default 8090)
"""
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        h = self.headers
        print(f"sink got topic={h.get('X-Kafka-Topic')} partition={h.get('X-Kafka-Partition')} "
              f"offset={h.get('X-Kafka-Offset')} key={h.get('X-Kafka-Key', '-')} "
              f"body={body.decode(errors='replace')}", flush=True)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8090
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()

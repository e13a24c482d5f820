"""A tiny REST endpoint for the demo: answers kbridge's deliver role, and
now and then refuses on purpose so the dashboard has retries and dead
letters to show. Every 5 s it prints what it got.

usage: demo-sink.py [PORT] [--fail STATUS:FRACTION,...] [--secret PREFIX=FILE]
                    [--verbose]

  PORT      default 8090
  --fail    e.g. 503:0.02,422:0.005 answers 2 % of calls 503 (kbridge
            retries them) and 0.5 % 422 (kbridge parks them in <topic>.dlq)
  --secret  calls whose path starts with PREFIX must carry a valid
            Standard Webhooks signature by the whsec_ secret in FILE (answered
            401 if not): the demo's signed subscription
  --verbose print every call (the Kafka headers kbridge sends, and the body)
"""
import base64
import hashlib
import hmac
import random
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FAIL = []  # (status, fraction)
SECRETS = []  # (path prefix, key bytes)
VERBOSE = False
COUNTS = Counter()
LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        status, roll = 200, random.random()
        for code, fraction in FAIL:
            if roll < fraction:
                status = code
                break
            roll -= fraction
        path = "/" + self.path.lstrip("/").split("/", 1)[0]
        signed = [key for prefix, key in SECRETS if self.path.startswith(prefix)]
        if signed and not verified(signed[0], self.headers, body):
            status = 401
        with LOCK:
            COUNTS[(path, status)] += 1
            if signed and status != 401:
                COUNTS[(path, "signed")] += 1
        if VERBOSE:
            h = self.headers
            print(f"sink got topic={h.get('X-Kafka-Topic')} partition={h.get('X-Kafka-Partition')} "
                  f"offset={h.get('X-Kafka-Offset')} key={h.get('X-Kafka-Key', '-')} status={status} "
                  f"body={body.decode(errors='replace')}", flush=True)
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_PUT = do_POST

    def log_message(self, *args):
        pass


def verified(key, headers, body):
    """The Standard Webhooks check: HMAC-SHA256 of id.timestamp.body, any of
    the space-separated v1 signatures, a timestamp within 5 minutes."""
    wid, ts = headers.get("webhook-id"), headers.get("webhook-timestamp")
    if not wid or not ts or not ts.isdigit() or abs(time.time() - int(ts)) > 300:
        return False
    mac = hmac.new(key, f"{wid}.{ts}.".encode() + body, hashlib.sha256).digest()
    want = base64.b64encode(mac).decode()
    got = [s.split(",", 1)[1] for s in headers.get("webhook-signature", "").split() if s.startswith("v1,")]
    return any(hmac.compare_digest(want, g) for g in got)


def report():
    while True:
        time.sleep(5)
        with LOCK:
            line = ", ".join(
                f"{path} {n} {'verified signatures' if s == 'signed' else f'answered {s}'}"
                for (path, s), n in sorted(COUNTS.items(), key=str)
            )
        print(f"sink: {line or 'no calls yet'}", flush=True)


def main(argv):
    global VERBOSE
    port = 8090
    args = iter(argv)
    for a in args:
        if a == "--fail":
            for part in next(args).split(","):
                code, fraction = part.split(":")
                FAIL.append((int(code), float(fraction)))
        elif a == "--secret":
            prefix, file = next(args).split("=", 1)
            secret = open(file).read().strip().removeprefix("whsec_")
            SECRETS.append((prefix, base64.b64decode(secret)))
        elif a == "--verbose":
            VERBOSE = True
        else:
            port = int(a)
    threading.Thread(target=report, daemon=True).start()
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])

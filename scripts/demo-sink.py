"""A tiny REST endpoint for the demo: answers kbridge's deliver role, and
now and then refuses on purpose so the dashboard has retries and dead
letters to show. Every 5 s it prints what it got.

usage: demo-sink.py [PORT] [--fail STATUS:FRACTION,...] [--verbose]

  PORT      default 8090
  --fail    e.g. 503:0.02,422:0.005 answers 2 % of calls 503 (kbridge
            retries them) and 0.5 % 422 (kbridge parks them in <topic>.dlq)
  --verbose print every call (the Kafka headers kbridge sends, and the body)
"""
import random
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FAIL = []  # (status, fraction)
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
        with LOCK:
            COUNTS[status] += 1
        if VERBOSE:
            h = self.headers
            print(f"sink got topic={h.get('X-Kafka-Topic')} partition={h.get('X-Kafka-Partition')} "
                  f"offset={h.get('X-Kafka-Offset')} key={h.get('X-Kafka-Key', '-')} status={status} "
                  f"body={body.decode(errors='replace')}", flush=True)
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def report():
    while True:
        time.sleep(5)
        with LOCK:
            line = ", ".join(f"{n} answered {s}" for s, n in sorted(COUNTS.items()))
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
        elif a == "--verbose":
            VERBOSE = True
        else:
            port = int(a)
    threading.Thread(target=report, daemon=True).start()
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])

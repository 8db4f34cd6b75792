"""Client CPU of one SES SendEmail call, side by side: before, the tuned client, the direct path, the floor.

Against a local stand-in (another process: a threaded http.server answering every POST at once with a fixed
SendEmail answer, so its CPU is not counted here), each way sends the same raw 4 KB message with four tags and a
configuration set; CPU per call is the sum of the sending threads' time.thread_time() over the calls, median of
`--rounds` rounds, with 1 and 4 threads sharing one client (as a send task's threads do):

- before: boto3 sesv2 client.send_email with the old sending config (parameter validation on);
- tuned client: ses.client_config (parameter validation off) and the handlers that do nothing for SendEmail
  unregistered;
- direct: SesTransport's path, ses_direct.DirectSendEmail over the same client;
- floor: botocore's SigV4Auth plus one urllib3 POST of the same request (no events, no parsing).

    .venv/bin/python benchmarks/ses_call.py [--calls 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "include")]

import boto3  # noqa: E402
import urllib3  # noqa: E402
from botocore.auth import SigV4Auth  # noqa: E402
from botocore.awsrequest import AWSRequest  # noqa: E402
from botocore.config import Config  # noqa: E402

from campaigns.sending.ses import client_config  # noqa: E402
from campaigns.sending.ses_direct import DirectSendEmail  # noqa: E402

STAND_IN = r'''
import socket, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
BODY = b'{"MessageId":"0100018c-local-message-id"}'
ANSWER = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nx-amzn-RequestId: local-1\r\n"
          b"Content-Length: %d\r\n\r\n" % len(BODY)) + BODY
class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def setup(self):
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.wfile.write(ANSWER)  # one write: no Nagle delay between head and body
    def log_message(self, *args):
        pass
server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
'''
RAW = b"Subject: benchmark\r\n\r\n" + (b"x" * 76 + b"\r\n") * 52  # ~4 KB, like a composed campaign email
PARAMS = {"FromEmailAddress": "news@example.com", "Destination": {"ToAddresses": ["ann@example.org"]},
          "Content": {"Raw": {"Data": RAW}},
          "EmailTags": [{"Name": name, "Value": "v"} for name in ("a", "b", "campaign", "recipient")],
          "ConfigurationSetName": "campaign-events"}
# Handlers botocore runs for sesv2 SendEmail that change nothing in this product's calls (measured one by one:
# the list a call runs is printed by --handlers).
NO_OP_HANDLERS = {
    "before-parameter-build.sesv2.SendEmail": ("generate_idempotent_uuid", "_handle_request_validation_mode_member"),
    "before-call.sesv2.SendEmail": ("add_recursion_detection_header", "inject_api_version_header_if_needed"),
}


def client(endpoint_url: str, config: Config):
    return boto3.client("sesv2", region_name="us-east-1", endpoint_url=endpoint_url, aws_access_key_id="AKIDBENCH",
                        aws_secret_access_key="bench-secret", config=config)


def before(endpoint_url: str) -> Callable[[], object]:
    ses = client(endpoint_url, client_config().merge(Config(parameter_validation=True)))
    return lambda: ses.send_email(**PARAMS)


def tuned(endpoint_url: str) -> Callable[[], object]:
    ses = client(endpoint_url, client_config())
    emitter = ses.meta.events._emitter
    for event, names in NO_OP_HANDLERS.items():
        for handler in list(emitter._handlers.prefix_search(event)):
            if handler.__name__ in names:
                ses.meta.events.unregister(event, handler)
    return lambda: ses.send_email(**PARAMS)


def direct(endpoint_url: str) -> Callable[[], object]:
    call = DirectSendEmail(client(endpoint_url, client_config())).call
    return lambda: call(PARAMS)


def floor(endpoint_url: str) -> Callable[[], object]:
    credentials = client(endpoint_url, client_config())._get_credentials()
    pool = urllib3.PoolManager(maxsize=10, timeout=urllib3.Timeout(connect=5, read=30), retries=False)
    url = endpoint_url + "/v2/email/outbound-emails"

    def call() -> object:
        body = json.dumps({**PARAMS, "Content": {"Raw": {"Data": base64.b64encode(RAW).decode()}}}).encode()
        request = AWSRequest("POST", url, data=body, headers={"Content-Type": "application/json"})
        SigV4Auth(credentials.get_frozen_credentials(), "ses", "us-east-1").add_auth(request)
        return json.loads(pool.urlopen("POST", url, body=body, headers=dict(request.headers.items())).data)

    return call


WAYS = {"before": before, "tuned client": tuned, "direct": direct, "floor": floor}


def cpu_per_call(call: Callable[[], object], calls: int, threads: int) -> float:
    """µs of the sending threads' CPU per call, `calls` calls split over `threads` threads."""
    spent: list[float] = []

    def run(count: int) -> None:
        started = time.thread_time()
        for _ in range(count):
            call()
        spent.append(time.thread_time() - started)

    workers = [threading.Thread(target=run, args=(calls // threads,)) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(spent) / (calls // threads * threads) * 1e6


def print_handlers(endpoint_url: str) -> None:
    """Every handler one SendEmail call of the sending client runs, event by event."""
    ses = client(endpoint_url, client_config())
    emitter = ses.meta.events._emitter
    ses.send_email(**PARAMS)
    for event in emitter._lookup_cache:
        if event.endswith("SendEmail") or event.endswith("sesv2"):
            names = [getattr(handler, "__qualname__", repr(handler)) for handler in emitter._lookup_cache[event]]
            print(f"{event:45s} {', '.join(names) or '-'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--handlers", action="store_true", help="print the handlers one call runs, then stop")
    args = parser.parse_args()
    stand_in = subprocess.Popen([sys.executable, "-c", STAND_IN], stdout=subprocess.PIPE, text=True)
    try:
        endpoint_url = f"http://127.0.0.1:{stand_in.stdout.readline().strip()}"
        if args.handlers:
            print_handlers(endpoint_url)
            return
        calls = {name: make(endpoint_url) for name, make in WAYS.items()}
        for call in calls.values():
            cpu_per_call(call, 200, 1)  # warm up: pools, caches, the stand-in's threads
        print(f"client CPU µs per SendEmail call, median of {args.rounds} rounds of {args.calls} calls")
        print(f"{'':14s} {'1 thread':>10s} {'4 threads':>10s}")
        for name, call in calls.items():
            row = [statistics.median(cpu_per_call(call, args.calls, threads) for _ in range(args.rounds))
                   for threads in (1, 4)]
            print(f"{name:14s} {row[0]:10.0f} {row[1]:10.0f}")
    finally:
        stand_in.terminate()
        stand_in.wait()


if __name__ == "__main__":
    main()

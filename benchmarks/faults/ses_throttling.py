"""Fault 2: the local SES answers 30% of SendEmail calls with TooManyRequestsException.

    .venv/bin/python benchmarks/faults/ses_throttling.py [--recipients 2000] [--share 0.3]

A fault-injecting HTTP proxy takes the local SES's port; the real local SES (moto server) moves behind it. The
code under test is unchanged: the stack's `aws_default` connection still points at the same URL. Expected: the run
succeeds and every recipient gets exactly one message; the proxy's counts show how many calls it refused.
Afterwards the stack's own local SES is started again on its port.
"""

from __future__ import annotations

import argparse
import http.client
import http.server
import json
import random
import socket
import subprocess
import sys
import threading

import common

from devstack import stack as devstack
from devstack.processes import stop

SEND_PATH = "/v2/email/outbound-emails"
THROTTLED = json.dumps({"__type": "TooManyRequestsException", "message": "Maximum sending rate exceeded."}).encode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ThrottlingProxy(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, upstream_port: int, share: float) -> None:
        self.upstream_port, self.share = upstream_port, share
        self.rng = random.Random(7)
        self.lock = threading.Lock()
        self.counts = {"throttled": 0, "forwarded_sends": 0, "other": 0}
        super().__init__(("127.0.0.1", port), _Handler)

    def throttle(self, path: str) -> bool:
        with self.lock:
            if path != SEND_PATH:
                self.counts["other"] += 1
                return False
            refuse = self.rng.random() < self.share
            self.counts["throttled" if refuse else "forwarded_sends"] += 1
            return refuse


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def _relay(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.server.throttle(self.path.split("?")[0]):
            self.send_response(429)
            self.send_header("Content-Type", "application/json")
            self.send_header("x-amzn-ErrorType", "TooManyRequestsException")
            self.send_header("Content-Length", str(len(THROTTLED)))
            self.end_headers()
            self.wfile.write(THROTTLED)
            return
        upstream = http.client.HTTPConnection("127.0.0.1", self.server.upstream_port, timeout=60)
        try:
            upstream.request(self.command, self.path, body=body,
                             headers={k: v for k, v in self.headers.items() if k.lower() != "host"})
            response = upstream.getresponse()
            payload = response.read()
        finally:
            upstream.close()
        self.send_response(response.status)
        for name, value in response.getheaders():
            if name.lower() not in ("content-length", "transfer-encoding", "connection", "server", "date"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = _relay


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipients", type=int, default=2000)
    parser.add_argument("--share", type=float, default=0.3, help="share of SendEmail calls answered 429")
    args = parser.parse_args()
    s = common.SETTINGS
    api = common.ensure_stack()

    # move the local SES behind the proxy
    stop(s.run_dir / "ses.pid")
    upstream_port = free_port()
    moto = subprocess.Popen([str(devstack.VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(upstream_port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proxy = ThrottlingProxy(s.ses_port, upstream_port, args.share)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        common.poll(lambda: _identity(upstream_port), what="moto behind the proxy", timeout=60, interval=0.5)
        list_name, prefix = common.seed_list(args.recipients)
        key = f"{list_name}-throttled"
        finished = api.run("send_campaign", common.campaign_conf(key, list_name, batch_size=100), timeout=900)
        campaign = common.campaign(key)
        counts = common.ledger_counts(campaign["id"])
        messages = common.local_ses_messages_to(prefix)
    finally:
        proxy.shutdown()
        proxy.server_close()
        moto.terminate()
        moto.wait(10)
        devstack.start_ses(s)  # the stack's own local SES back on its port
    calls = proxy.counts["throttled"] + proxy.counts["forwarded_sends"]
    print(f"proxy: {calls} SendEmail calls, {proxy.counts['throttled']} answered TooManyRequestsException "
          f"({proxy.counts['throttled'] / max(calls, 1):.0%}), {proxy.counts['forwarded_sends']} forwarded")
    print(f"run {finished['state']}; ledger {dict(counts)}; local SES {sum(messages.values())} messages to "
          f"{len(messages)} addresses")
    return common.verdict({
        "the run succeeded": finished["state"] == "success",
        f"about {args.share:.0%} of calls were throttled": abs(proxy.counts["throttled"] / max(calls, 1)
                                                                - args.share) < 0.05,
        "every recipient got exactly one message": len(messages) == args.recipients
                                                    and all(n == 1 for n in messages.values()),
        "every ledger row sent": counts == {"sent": args.recipients},
    })


def _identity(port: int) -> bool:
    import boto3

    try:
        client = boto3.client("sesv2", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                              aws_access_key_id="testing", aws_secret_access_key="testing")
        client.create_email_identity(EmailIdentity=devstack.DEMO_SENDER_DOMAIN)
        return True
    except Exception:  # noqa: BLE001 - not up yet
        return False


if __name__ == "__main__":
    sys.exit(main())

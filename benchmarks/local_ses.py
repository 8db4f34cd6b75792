"""Does recording slow the local SES down? SendEmail (raw MIME, tags, configuration set, as the send path sends)
against `moto_server` and against `python -m devstack.local_ses`, each fresh in its own process, alternately.

    .venv/bin/python benchmarks/local_ses.py [--sends 2000] [--threads 8] [--rounds 2]

Prints sends/s, the median and p99 latency and the server's CPU time per send, per server and round, then local
SES / moto. Target: >= 0.95 (the
send path pushes 100-200 sends/s at it), and every accepted send recorded (/local-ses/messages counts them). On a
busy 2-core machine the rounds scatter by more than the recording costs, so it also prints that cost measured
alone, in-process: the time to turn one SendEmail body into an AcceptedMessage and store it.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from email.message import EmailMessage
from pathlib import Path

import boto3
from botocore.config import Config

from devstack.local_ses.server import MessageStore, accepted_message

VENV_BIN = Path(sys.executable).parent
HTML = "<html><body><h1>Hello Ann</h1>" + "<p>News paragraph with some words.</p>" * 40 + "</body></html>"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(kind: str) -> tuple[subprocess.Popen, str]:
    """A fresh server of `kind` (moto or local) on a free port, once it answers."""
    port = free_port()
    argv = ([str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)] if kind == "moto"
            else [sys.executable, "-m", "devstack.local_ses", "--host", "127.0.0.1", "--port", str(port)])
    server = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/data.json", timeout=1).close()  # noqa: S310 - loopback
            return server, endpoint
        except OSError:
            if time.monotonic() > deadline:
                server.kill()
                raise
            time.sleep(0.1)


def raw_message(i: int) -> bytes:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = "news@example.com", f"r{i}@example.org", "Hello"
    message.set_content("Hello Ann")
    message.add_alternative(HTML, subtype="html")
    return message.as_bytes()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (from /proc: what the server spends, whatever else runs)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(kind: str, sends: int, threads: int) -> tuple[float, float, float, float, int | None]:
    """(sends/s, median ms, p99 ms, server CPU ms per send, recorded count or None for moto) for a fresh server."""
    server, endpoint = start(kind)
    try:
        client = boto3.client("sesv2", region_name="us-east-1", endpoint_url=endpoint, aws_access_key_id="testing",
                              aws_secret_access_key="testing",
                              config=Config(max_pool_connections=threads, retries={"total_max_attempts": 1}))
        client.create_email_identity(EmailIdentity="example.com")
        bodies = [raw_message(i) for i in range(sends)]

        def send(i: int) -> float:
            started = time.perf_counter()
            client.send_email(FromEmailAddress="news@example.com", Destination={"ToAddresses": [f"r{i}@example.org"]},
                              Content={"Raw": {"Data": bodies[i]}}, ConfigurationSetName="campaign-events",
                              EmailTags=[{"Name": "campaign", "Value": "1"}, {"Name": "recipient", "Value": str(i)}])
            return time.perf_counter() - started

        started, cpu_before = time.perf_counter(), cpu_seconds(server.pid)
        with ThreadPoolExecutor(threads) as pool:
            latencies = sorted(pool.map(send, range(sends)))
        elapsed, cpu = time.perf_counter() - started, cpu_seconds(server.pid) - cpu_before
        recorded = None
        if kind == "local":
            with urllib.request.urlopen(f"{endpoint}/local-ses/messages", timeout=30) as response:  # noqa: S310
                recorded = len(json.load(response)["messages"])
        return (sends / elapsed, statistics.median(latencies) * 1000, latencies[int(len(latencies) * 0.99)] * 1000,
                cpu / sends * 1000, recorded)
    finally:
        server.terminate()
        server.wait()


def record_cost(count: int = 5000) -> float:
    """Microseconds to record one accepted SendEmail (parse the body, decode the raw bytes, store it)."""
    body = json.dumps({"FromEmailAddress": "news@example.com", "Destination": {"ToAddresses": ["r@example.org"]},
                       "Content": {"Raw": {"Data": base64.b64encode(raw_message(0)).decode()}},
                       "EmailTags": [{"Name": "campaign", "Value": "1"}], "ConfigurationSetName": "campaign-events"})
    store = MessageStore()
    started = time.perf_counter()
    for i in range(count):
        store.add(accepted_message(json.loads(body), f"m{i}", dt.datetime.now(dt.UTC)))
    return (time.perf_counter() - started) / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sends", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    rates: dict[str, list[float]] = {"moto": [], "local": []}
    cpu: dict[str, list[float]] = {"moto": [], "local": []}
    for round_no in range(1, args.rounds + 1):
        for kind in ("moto", "local"):
            rate, p50, p99, cpu_ms, recorded = measure(kind, args.sends, args.threads)
            rates[kind].append(rate)
            cpu[kind].append(cpu_ms)
            extra = f", recorded {recorded}/{args.sends}" if recorded is not None else ""
            print(f"round {round_no} {kind:5} {rate:7.1f} sends/s  p50 {p50:5.1f} ms  p99 {p99:5.1f} ms  "
                  f"server CPU {cpu_ms:.2f} ms/send{extra}", flush=True)
    ratio = statistics.median(rates["local"]) / statistics.median(rates["moto"])
    print(f"server CPU per send (median): moto_server {statistics.median(cpu['moto']):.2f} ms, "
          f"local SES {statistics.median(cpu['local']):.2f} ms")
    print(f"recording one send, in-process: {record_cost():.1f} µs")
    verdict = "met" if ratio >= 0.95 else "MISSED"
    print(f"local SES / moto_server (median sends/s): {ratio:.3f}  target >= 0.95: {verdict}")


if __name__ == "__main__":
    main()

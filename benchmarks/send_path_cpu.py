"""CPU per email of one send task running the real send path (pending rows -> limiter slot -> claim -> compose ->
SES -> ledger `sent`) against a local SES stand-in that costs next to nothing: nginx answering SendEmail with a
fixed JSON body, its own CPU measured apart. Issue #19, item 1.

    .venv/bin/python benchmarks/send_path_cpu.py [--emails 20000] [--rounds 3] [--point unbound|latency|both]
                                                 [--baseline f8125ff|none]

Two points: `unbound` (R = 100,000/s, never binding, 4 threads: what one core can push) and `latency` (nginx
answers after 50 ms, as SES does over the internet; R = 400/s with 24 threads in flight, Little's law 400 x 0.05 =
20 plus headroom). Each round sends a fresh campaign of --emails pending rows with SendBatch(...).run() in one
process: the campaign's real Composer, a real RateLimiter on Redis, psycopg connections to PostgreSQL and
SesTransport over a boto3 sesv2 client built like production's (ses.client_config) whose endpoint is nginx.

CPU is split by stage at library boundaries, so a rewrite of the send loop's internals is measured the same way:
time.thread_time() per thread, exclusive (a nested call is counted once, to the innermost stage):
  ledger    psycopg: Connection/Cursor/ServerCursor execute, fetch, commit, connect, close, wait; pipelines;
            transactions (all PostgreSQL client work, the campaign watch's and the reputation guard's reads too)
  limiter   redis-py: Redis.execute_command, Pipeline.execute(_command), Script.__call__
  compose   the composer object's compose()
  SES       the transport object's send() (botocore, urllib3), less anything nested in it counted above
  else      the process's CPU (time.process_time, all threads) less the stages: the loop, queue, threads, watch
Beside them: PostgreSQL's own CPU (the backends this run opened, read from /proc before they close; and the whole
server before/after, which on a shared machine includes other users), nginx's CPU, the achieved rate.

The floor, in the same run against the same nginx, single thread, --floor-emails calls (default 2,000): botocore's
SigV4Auth signing the same SendEmail request plus one urllib3 POST of it, and the plain boto3 client's send_email.

`--baseline REV` measures REV's code first (a temporary `git worktree`, this script run in a subprocess with
PYTHONPATH pointing at it), then the working tree's the same way; one table, rows x (baseline, this tree, ratio).
Medians of the rounds, per row. Exits 1 when a round leaves any ledger row not `sent`.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import functools
import inspect
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("ledger", "limiter", "compose", "ses")
STAGE_LABELS = {"ledger": "ledger (psycopg)", "limiter": "limiter (redis-py)", "compose": "compose (Composer)",
                "ses": "SES client (transport.send)", "else": "everything else"}
SEND_PATH = "/v2/email/outbound-emails"
RUN_ID = "bench-cpu"
MAX_RATE = 1_000_000.0  # sends/s: the most any revision's limiter and planner accept


@dataclass(frozen=True)
class Point:
    """One measured operating point: the rate, the threads and the stand-in's answer delay."""

    name: str
    rate: float
    threads: int
    latency: float


# ---------------------------------------------------------------------------------------------------- stage clock


@dataclass
class _ThreadStages:
    """One thread's open frames and totals: only that thread writes them, so no lock is taken per call."""

    stack: list[list[Any]] = field(default_factory=list)  # [stage, depth] frames, innermost last
    mark: float = 0.0
    totals: Counter = field(default_factory=Counter)
    calls: int = 0


class StageClock:
    """Exclusive CPU seconds per stage, summed over threads: time inside a wrapped call goes to the innermost stage.

    A call nested in the same stage (Connection.execute -> Cursor.execute -> Connection.wait) only deepens the frame
    and reads no clock, so it is counted once and costs next to nothing.
    """

    def __init__(self) -> None:
        self._local = threading.local()
        self._threads: list[_ThreadStages] = []
        self._lock = threading.Lock()

    def _mine(self) -> _ThreadStages:
        mine = getattr(self._local, "stages", None)
        if mine is None:
            mine = self._local.stages = _ThreadStages()
            with self._lock:
                self._threads.append(mine)
        return mine

    def enter(self, stage: str) -> None:
        mine = self._mine()
        if mine.stack and mine.stack[-1][0] == stage:
            mine.stack[-1][1] += 1
            return
        now = time.thread_time()
        if mine.stack:
            mine.totals[mine.stack[-1][0]] += now - mine.mark
        mine.stack.append([stage, 1])
        mine.mark = now
        mine.calls += 1

    def leave(self) -> None:
        mine = self._mine()
        frame = mine.stack[-1]
        frame[1] -= 1
        if frame[1]:
            return
        now = time.thread_time()
        mine.totals[frame[0]] += now - mine.mark
        mine.stack.pop()
        mine.mark = now

    def wrap(self, stage: str, fn: Callable) -> Callable:
        """`fn` with its CPU counted to `stage` (a generator function: each step of it)."""
        if inspect.isgeneratorfunction(fn):
            return self._wrap_generator(stage, fn)

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            self.enter(stage)
            try:
                return fn(*args, **kwargs)
            finally:
                self.leave()

        return timed

    def _wrap_generator(self, stage: str, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            steps = fn(*args, **kwargs)
            while True:
                self.enter(stage)
                try:
                    item = next(steps)
                except StopIteration:
                    return
                finally:
                    self.leave()
                yield item

        return timed

    def totals(self) -> tuple[Counter, int]:
        """(CPU seconds per stage, timed calls) over every thread that ran a wrapped call."""
        with self._lock:
            totals, calls = Counter(), 0
            for mine in self._threads:
                totals.update(mine.totals)
                calls += mine.calls
        return totals, calls


def timing_cost(samples: int = 20_000) -> float:
    """CPU seconds one timed (non-nested) call adds: two thread_time() reads and the bookkeeping."""
    clock = StageClock()
    noop = clock.wrap("ledger", lambda: None)
    start = time.thread_time()
    for _ in range(samples):
        noop()
    bare_start = time.thread_time()
    for _ in range(samples):
        (lambda: None)()
    bare = time.thread_time() - bare_start
    return max(0.0, (bare_start - start - bare) / samples)


# ------------------------------------------------------------------------------------- library boundaries (patches)


def _library_boundaries() -> list[tuple[type, tuple[str, ...], str]]:
    """(class, methods, stage): where the send path leaves our code for a client library."""
    import psycopg
    import redis
    from psycopg import Pipeline, ServerCursor, Transaction
    from redis.commands.core import Script

    return [
        (psycopg.Connection, ("connect", "execute", "commit", "rollback", "close", "wait", "cursor"), "ledger"),
        (psycopg.Cursor, ("execute", "executemany", "fetchone", "fetchmany", "fetchall", "__next__", "stream",
                          "close"), "ledger"),
        (ServerCursor, ("execute", "executemany", "fetchone", "fetchmany", "fetchall", "__next__", "close"), "ledger"),
        (Pipeline, ("sync", "__enter__", "__exit__"), "ledger"),
        (Transaction, ("__enter__", "__exit__"), "ledger"),
        (redis.Redis, ("execute_command",), "limiter"),
        (redis.client.Pipeline, ("execute_command", "execute"), "limiter"),
        (Script, ("__call__",), "limiter"),
    ]


@contextlib.contextmanager
def patched_libraries(clock: StageClock, backends: BackendCpu) -> Iterator[None]:
    """Inside this process only: psycopg and redis-py methods timed to their stage; backends read before close."""
    saved: list[tuple[type, str, Any]] = []
    for cls, names, stage in _library_boundaries():
        for name in names:
            if name not in cls.__dict__:
                continue  # inherited: the base class's patch already times it
            original = cls.__dict__[name]
            saved.append((cls, name, original))
            if isinstance(original, classmethod):
                setattr(cls, name, classmethod(clock.wrap(stage, original.__func__)))
            else:
                setattr(cls, name, clock.wrap(stage, original))
    import psycopg

    connect, close = psycopg.Connection.connect.__func__, psycopg.Connection.close

    def connect_and_track(cls, *args, **kwargs):
        conn = connect(cls, *args, **kwargs)
        backends.opened(conn.info.backend_pid)
        return conn

    def read_then_close(self):
        if not self.closed:
            backends.closing(self.info.backend_pid)
        close(self)

    module_connect = psycopg.connect  # psycopg.connect is Connection.connect bound at import: replaced with it
    psycopg.Connection.connect = classmethod(connect_and_track)
    psycopg.Connection.close = read_then_close
    psycopg.connect = psycopg.Connection.connect
    try:
        yield
    finally:
        psycopg.connect = module_connect
        for cls, name, original in reversed(saved):
            setattr(cls, name, original)


class BackendCpu:
    """CPU seconds of the PostgreSQL backends the run opened, each read from /proc just before its connection closes
    (a backend's CPU is all this run's: it was forked for the connection)."""

    def __init__(self) -> None:
        self._open: dict[int, psutil.Process] = {}
        self._seconds = 0.0
        self._lock = threading.Lock()

    def opened(self, pid: int) -> None:
        with self._lock, contextlib.suppress(psutil.Error):
            self._open[pid] = psutil.Process(pid)

    def closing(self, pid: int) -> None:
        with self._lock:
            process = self._open.pop(pid, None)
            if process is not None:
                self._seconds += _cpu(process)

    def seconds(self) -> float:
        """Closed backends, plus the ones still open now."""
        with self._lock:
            return self._seconds + sum(_cpu(process) for process in self._open.values())


def _cpu(process: psutil.Process, *, children: bool = False) -> float:
    """user + system CPU seconds of a process (with `children`: also its live and reaped children's)."""
    try:
        times = process.cpu_times()
    except psutil.Error:
        return 0.0
    total = times.user + times.system
    if children:
        total += times.children_user + times.children_system
        total += sum(_cpu(child) for child in process.children(recursive=True))
    return total


# -------------------------------------------------------------------------------------------- the SES stand-in


NGINX_CONF = """load_module {echo_module};
daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    client_body_buffer_size 1m;
    client_max_body_size 40m;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    # SendEmail's answer; $request_id keeps each MessageId unique (the ledger's ses_message_id is a unique key)
    server {{
        listen 127.0.0.1:{fast_port};
        location = {path} {{ default_type application/json; return 200 '{{"MessageId":"bench-$request_id"}}'; }}
    }}
    server {{
        listen 127.0.0.1:{slow_port};
        location = {path} {{
            default_type application/json;
            echo_sleep {latency};
            echo -n '{{"MessageId":"bench-$request_id"}}';
        }}
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class StandIn:
    """The running nginx: its master's pid and one endpoint per point."""

    pid: int
    endpoints: dict[str, str]


@contextlib.contextmanager
def nginx_stand_in(latency: float) -> Iterator[StandIn]:
    """nginx (Debian's, with the echo module) on two free loopback ports, its own config and prefix in a temp dir:
    `unbound` answers at once, `latency` after `latency` seconds (echo_sleep: a timer, no CPU)."""
    from devstack.services import NGINX_ECHO_MODULE, ensure_nginx

    binary = ensure_nginx()
    with tempfile.TemporaryDirectory(prefix="send-path-cpu-nginx-") as prefix:
        ports = {"unbound": free_port(), "latency": free_port()}
        conf = Path(prefix) / "nginx.conf"
        conf.write_text(NGINX_CONF.format(echo_module=NGINX_ECHO_MODULE, prefix=prefix, path=SEND_PATH,
                                          fast_port=ports["unbound"], slow_port=ports["latency"], latency=latency))
        server = subprocess.Popen([binary, "-p", prefix, "-c", str(conf), "-e", f"{prefix}/error.log"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            _wait_for_ports(server, ports.values(), Path(prefix) / "error.log")
            yield StandIn(server.pid, {name: f"http://127.0.0.1:{port}" for name, port in ports.items()})
        finally:
            server.terminate()
            server.wait(timeout=30)


def _wait_for_ports(server: subprocess.Popen, ports, log: Path) -> None:
    deadline = time.monotonic() + 15
    for port in ports:
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"nginx exited ({server.returncode}): {server.stderr.read().decode()}"
                                   f"{log.read_text() if log.exists() else ''}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"nginx did not listen on {port} within 15 s")
            time.sleep(0.05)


# ------------------------------------------------------------------------------------------ measurement process


def _setup_environment(dsn: str) -> None:
    """The settings the send path reads, pointed at the scratch database (as send_throughput.py does)."""
    os.environ["AIRFLOW_CONN_CAMPAIGN_DB"] = dsn
    os.environ.setdefault("TRACKING_SECRET_KEYS", "benchmark-key")
    os.environ.setdefault("TRACKING_BASE_URL", "https://track.example.test")
    from campaigns.config import get_settings

    get_settings.cache_clear()


def prepare_campaign(dsn: str, recipients: int) -> dict[str, Any]:
    """A running campaign of `recipients` pending rows in one send task, through the pipeline's own functions."""
    from render_mime import HTML, SUBJECT, TEXT

    from campaigns import db
    from campaigns.lifecycle import pipeline
    from campaigns.sending.plan import SendTask

    with db.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE campaign_recipients, campaigns, contacts, lists RESTART IDENTITY CASCADE")
        conn.execute("INSERT INTO lists (name) VALUES ('bench')")
        conn.execute("""INSERT INTO contacts (email, first_name, last_name, attributes)
                        SELECT 'r' || g || '@example.org', 'Reader' || g, 'Smith',
                               jsonb_build_object('country', 'DE', 'company', 'Company ' || (g %% 97))
                        FROM generate_series(1, %s) g""", [recipients])
        conn.execute("INSERT INTO list_members (list_id, contact_id) SELECT 1, id FROM contacts")
    conf = {"campaign": {"key": f"cpu-{uuid.uuid4().hex[:6]}", "subject": SUBJECT, "from_email": "news@example.com",
                         "html": HTML, "text": TEXT, "audience": {"lists": ["bench"]}},
            "batch_size": 500}
    campaign_id = pipeline.resolve_campaign(conf, RUN_ID)
    pipeline.snapshot_recipients(campaign_id, conf)
    [task] = pipeline.plan_batches(campaign_id, conf, RUN_ID, rate=MAX_RATE)  # one task carries everything
    with db.connect(dsn) as conn:
        campaign = conn.execute("SELECT * FROM campaigns WHERE id = %s", [campaign_id]).fetchone()
    return {"task": SendTask.from_dict(task), "campaign": campaign}


def sesv2_client(endpoint: str, threads: int):
    """A sesv2 client like production's (ses.client_config), its session kept for the floor's signer."""
    import boto3

    from campaigns.sending.ses import client_config

    session = boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1")
    return session, session.client("sesv2", endpoint_url=endpoint, config=client_config(threads))


def postmaster(dsn: str) -> psutil.Process:
    """The PostgreSQL server process the benchmark's database lives on (the parent of any of its backends)."""
    from campaigns import db

    with db.connect(dsn) as conn:  # read while the backend lives: it exits with the connection
        pid = conn.execute("SELECT pg_backend_pid() AS pid").fetchone()["pid"]
        return psutil.Process(psutil.Process(pid).ppid())


def send_round(dsn: str, point: Point, endpoint: str, nginx: psutil.Process, server: psutil.Process,
               redis_url: str, emails: int) -> dict[str, Any]:
    """One fresh campaign through SendBatch(...).run() at `point`; CPU seconds per stage and per process."""
    import redis

    prepared = prepare_campaign(dsn, emails)
    redis_client = redis.Redis.from_url(redis_url)
    key = f"ses:rate:{{bench-cpu-{uuid.uuid4().hex[:6]}:us-east-1}}"
    clock, backends = StageClock(), BackendCpu()
    batch = instrumented_batch(dsn, prepared, point, endpoint, redis_client, key, clock)
    with patched_libraries(clock, backends):
        before = (time.process_time(), _cpu(nginx, children=True), _cpu(server, children=True), time.perf_counter())
        report = batch.run()
        after = (time.process_time(), _cpu(nginx, children=True), _cpu(server, children=True), time.perf_counter())
        database = backends.seconds()
    redis_client.delete(key, key + ":penalty")
    redis_client.close()
    stages, calls = clock.totals()
    return {"stages": {stage: stages[stage] for stage in STAGES}, "process": after[0] - before[0],
            "nginx": after[1] - before[1], "server": after[2] - before[2], "backends": database,
            "wall": after[3] - before[3], "calls": calls, "error": report.as_dict()["error"],
            **ledger_outcome(dsn, prepared["task"].campaign_id)}


def instrumented_batch(dsn: str, prepared: dict[str, Any], point: Point, endpoint: str, redis_client, key: str,
                       clock: StageClock):
    """The SendBatch a send task builds (send_batch in the pipeline), its composer and transport timed by `clock`."""
    from campaigns import db
    from campaigns.config import get_settings
    from campaigns.lifecycle import pipeline
    from campaigns.lifecycle.reputation import ReputationGuard
    from campaigns.sending.ledger import Attempt
    from campaigns.sending.ratelimit import RateLimiter
    from campaigns.sending.sender import SendBatch
    from campaigns.sending.ses import SesTransport

    campaign, task, settings = prepared["campaign"], prepared["task"], get_settings()
    builder = pipeline.composer_for(campaign, settings)
    builder.compose = clock.wrap("compose", builder.compose)
    transport = SesTransport(sesv2_client(endpoint, point.threads)[1])
    transport.send = clock.wrap("ses", transport.send)
    return SendBatch(task, attempt=Attempt(RUN_ID, 0, 1), from_email=campaign["from_email"], builder=builder,
                     transport=transport, limiter=RateLimiter(redis_client, key, point.rate),
                     connect=lambda: db.connect(dsn, autocommit=True), threads=point.threads,
                     guard=ReputationGuard.from_settings(task.campaign_id, settings, run_id=RUN_ID),
                     **pipeline_options(SendBatch, point))


def pipeline_options(send_batch: type, point: Point) -> dict[str, Any]:
    """What the revision's pipeline.send_batch passes to SendBatch beyond the above, for the options it has:
    slots reserved several per round trip at high rates (ratelimit.slot_batch), since 2026-12-04."""
    if "slot_batch" not in inspect.signature(send_batch).parameters:
        return {}
    from campaigns.sending.ratelimit import slot_batch

    return {"slot_batch": slot_batch(point.rate, point.threads)}


def ledger_outcome(dsn: str, campaign_id: int) -> dict[str, Any]:
    """How the round's rows ended (all must be `sent`) and the rate SES saw (first to last sent_at)."""
    from campaigns import db
    from campaigns.sending import ledger

    with db.connect(dsn) as conn:
        counts = {row["status"]: row["n"] for row in ledger.status_counts(conn, campaign_id)}
        span = conn.execute("""SELECT count(*) AS n, extract(epoch FROM max(sent_at) - min(sent_at)) AS s
                               FROM campaign_recipients WHERE campaign_id = %s AND status = 'sent'""",
                            [campaign_id]).fetchone()
    seconds = float(span["s"] or 0)
    return {"statuses": counts, "sent": span["n"], "achieved": (span["n"] - 1) / seconds if seconds else 0.0}


def one_message(dsn: str) -> tuple[bytes, dict[str, str]]:
    """A message the campaign's Composer built, and the tags the send loop puts on it: the floor sends this."""
    from campaigns.config import get_settings
    from campaigns.lifecycle import pipeline

    prepared = prepare_campaign(dsn, 1)
    builder = pipeline.composer_for(prepared["campaign"], get_settings())
    raw = builder.compose(1, "r1@example.org", {"email": "r1@example.org", "first_name": "Reader1",
                                                 "last_name": "Smith", "country": "DE", "company": "Company 1"})
    return raw, {**builder.feedback_tags, "campaign": str(prepared["task"].campaign_id), "recipient": "1"}


def _send_params(raw: bytes, tags: dict[str, str]) -> dict[str, Any]:
    return {"FromEmailAddress": "news@example.com", "Destination": {"ToAddresses": ["r1@example.org"]},
            "Content": {"Raw": {"Data": raw}},
            "EmailTags": [{"Name": name, "Value": value} for name, value in tags.items()]}


def floor_signer(endpoint: str, raw: bytes, tags: dict[str, str], calls: int) -> float:
    """CPU seconds per call of the least the library offers: the JSON body, botocore's SigV4Auth with the client's
    credentials, one urllib3 POST and the MessageId read back."""
    import urllib3
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest

    session, client = sesv2_client(endpoint, 1)
    credentials = session.get_credentials().get_frozen_credentials()
    signing_name, region = client.meta.service_model.signing_name, client.meta.region_name
    url = endpoint + SEND_PATH
    pool = urllib3.PoolManager(maxsize=1)
    start = time.process_time()
    for _ in range(calls):
        params = _send_params(raw, tags)
        params["Content"]["Raw"]["Data"] = base64.b64encode(raw).decode()
        request = AWSRequest(method="POST", url=url, data=json.dumps(params).encode(),
                             headers={"Content-Type": "application/json"})
        SigV4Auth(credentials, signing_name, region).add_auth(request)
        prepared = request.prepare()
        response = pool.urlopen("POST", url, body=prepared.body, headers=dict(prepared.headers))
        json.loads(response.data)["MessageId"]
    return (time.process_time() - start) / calls


def floor_boto3(endpoint: str, raw: bytes, tags: dict[str, str], calls: int) -> float:
    """CPU seconds per call of the plain boto3 sesv2 client's send_email with the same raw message."""
    _, client = sesv2_client(endpoint, 1)
    client.send_email(**_send_params(raw, tags))  # the first call loads the operation's models: not the floor
    start = time.process_time()
    for _ in range(calls):
        client.send_email(**_send_params(raw, tags))["MessageId"]
    return (time.process_time() - start) / calls


def measure(args: argparse.Namespace) -> None:
    """The measurement process (this revision's code on PYTHONPATH): every round of every point, then the floor."""
    from devstack.services import scratch_database
    from devstack.settings import SETTINGS

    # One send task carries the whole campaign, whatever a revision's planner would split it into.
    os.environ["SEND_TASK_PARALLELISM"] = "1"
    nginx = psutil.Process(args.nginx_pid)
    endpoints = json.loads(args.endpoints)
    results: dict[str, Any] = {"points": {}, "floor": {"signer": [], "boto3": []}}
    with scratch_database(SETTINGS, "campaigns_bench_cpu") as dsn:
        _setup_environment(dsn)
        server = postmaster(dsn)
        results["timing_cost"] = timing_cost()
        for point in chosen_points(args):
            rounds = results["points"][point.name] = []
            for round_no in range(1, args.rounds + 1):
                rounds.append(send_round(dsn, point, endpoints[point.name], nginx, server,
                                         SETTINGS.redis_url(args.redis_db), args.emails))
                _progress(args.label, point, round_no, rounds[-1])
        raw, tags = one_message(dsn)
        results["message_bytes"] = len(raw)
        for round_no in range(1, args.rounds + 1):
            results["floor"]["signer"].append(floor_signer(endpoints["unbound"], raw, tags, args.floor_emails))
            results["floor"]["boto3"].append(floor_boto3(endpoints["unbound"], raw, tags, args.floor_emails))
            print(f"[{args.label}] floor round {round_no}: SigV4Auth + urllib3 "
                  f"{results['floor']['signer'][-1] * 1e6:,.0f} µs, boto3 send_email "
                  f"{results['floor']['boto3'][-1] * 1e6:,.0f} µs per call", file=sys.stderr, flush=True)
    Path(args.results).write_text(json.dumps(results))


def _progress(label: str, point: Point, round_no: int, result: dict[str, Any]) -> None:
    statuses = ", ".join(f"{count} {status}" for status, count in sorted(result["statuses"].items()))
    print(f"[{label}] {point.name} round {round_no}: {result['process'] / max(1, result['sent']) * 1e6:,.0f} µs "
          f"per email, {result['achieved']:,.1f}/s; ledger: {statuses}"
          + (f"; error: {result['error']}" if result["error"] else ""), file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- orchestration


def chosen_points(args: argparse.Namespace) -> list[Point]:
    points = {"unbound": Point("unbound", args.unbound_rate, args.unbound_threads, 0.0),
              "latency": Point("latency", args.latency_rate, args.latency_threads, args.latency)}
    return list(points.values()) if args.point == "both" else [points[args.point]]


@contextlib.contextmanager
def revision_tree(rev: str) -> Iterator[Path]:
    """A temporary `git worktree` of `rev` (detached), removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="send-path-cpu-baseline-"))
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--quiet", str(folder), rev], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(folder)], check=False)
        shutil.rmtree(folder, ignore_errors=True)


MEASUREMENT_OPTIONS = ("emails", "rounds", "point", "floor_emails", "unbound_rate", "unbound_threads", "latency_rate",
                       "latency_threads", "latency", "redis_db")


def run_measurement(tree: Path, label: str, stand_in: StandIn, args: argparse.Namespace) -> dict[str, Any]:
    """This script in a subprocess with `tree`'s code on PYTHONPATH; returns what it measured."""
    with tempfile.NamedTemporaryFile(suffix=".json") as results:
        argv = [sys.executable, str(Path(__file__).resolve()), "--measure", "--results", results.name,
                "--label", label, "--nginx-pid", str(stand_in.pid), "--endpoints", json.dumps(stand_in.endpoints),
                *passed_on(args)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(tree / part) for part in ("include", ".", "plugins"))}
        subprocess.run(argv, env=env, check=True, cwd=tree)
        return json.loads(Path(results.name).read_text())


def passed_on(args: argparse.Namespace) -> list[str]:
    """The measurement options, as the measurement process takes them."""
    return [f"--{name.replace('_', '-')}={getattr(args, name)}" for name in MEASUREMENT_OPTIONS]


def per_email(rounds: list[dict[str, Any]], value: Callable[[dict[str, Any]], float]) -> float:
    """Median over the rounds of `value` per sent email, in µs."""
    return statistics.median(value(r) / max(1, r["sent"]) for r in rounds) * 1e6


def rows_for(rounds: list[dict[str, Any]]) -> list[tuple[str, float, str]]:
    """(label, median, unit) for one point's rounds."""
    stage_rows = [(STAGE_LABELS[stage], per_email(rounds, lambda r, s=stage: r["stages"][s]), "µs")
                  for stage in STAGES]
    return [
        *stage_rows,
        (STAGE_LABELS["else"], per_email(rounds, lambda r: r["process"] - sum(r["stages"].values())), "µs"),
        ("send task process, total", per_email(rounds, lambda r: r["process"]), "µs"),
        ("PostgreSQL: this run's backends", per_email(rounds, lambda r: r["backends"]), "µs"),
        ("PostgreSQL: whole server (shared)", per_email(rounds, lambda r: r["server"]), "µs"),
        ("nginx (the SES stand-in)", per_email(rounds, lambda r: r["nginx"]), "µs"),
        ("timed library calls per email", per_email(rounds, lambda r: r["calls"]) / 1e6, ""),
        ("achieved rate", statistics.median(r["achieved"] for r in rounds), "/s"),
        ("sends per core (1 s / total)", 1e6 / per_email(rounds, lambda r: r["process"]), "/s"),
    ]


def floor_rows(results: dict[str, Any]) -> list[tuple[str, float, str]]:
    floor = results["floor"]
    return [("floor: SigV4Auth + urllib3 POST", statistics.median(floor["signer"]) * 1e6, "µs"),
            ("floor: boto3 sesv2 send_email", statistics.median(floor["boto3"]) * 1e6, "µs")]


def print_table(columns: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    """Stage rows x (baseline, this tree, ratio) for every point, then the floor."""
    names = list(columns)
    first = next(iter(columns.values()))
    print(f"\n{args.emails:,} emails x {args.rounds} round(s), medians; message {first['message_bytes']:,} bytes; "
          f"CPU µs per email; a timed library call costs ~{first['timing_cost'] * 1e6:.2f} µs (counted in the rows)")
    header = f"{'':38}" + "".join(f"{name:>14}" for name in names) + (f"{'ratio':>8}" if len(names) == 2 else "")
    sections = [(f"{p.name}: R = {p.rate:,.0f}/s, {p.threads} threads, stand-in answers after "
                 f"{p.latency * 1000:.0f} ms", [rows_for(c["points"][p.name]) for c in columns.values()])
                for p in chosen_points(args)]
    sections.append((f"floor: single thread, {args.floor_emails:,} calls, answers at once",
                     [floor_rows(c) for c in columns.values()]))
    for title, tables in sections:
        print(f"\n{title}\n{header}")
        for cells in zip(*tables, strict=True):
            label, unit = cells[0][0], cells[0][2]
            values = [value for _, value, _ in cells]
            ratio = f"{values[1] / values[0]:8.2f}" if len(values) == 2 and values[0] else ""
            print(f"  {label:36}" + "".join(f"{value:>11,.1f} {unit:2}" for value in values) + ratio)


def all_sent(columns: dict[str, dict[str, Any]]) -> bool:
    """Every round of every point left every ledger row `sent`."""
    return all(set(r["statuses"]) == {"sent"} and r["sent"] == sum(r["statuses"].values())
               for c in columns.values() for rounds in c["points"].values() for r in rounds)


def orchestrate(args: argparse.Namespace) -> int:
    sys.path[:0] = [str(ROOT), str(ROOT / "include")]
    columns: dict[str, dict[str, Any]] = {}
    with nginx_stand_in(args.latency) as stand_in:
        if args.baseline != "none":
            with revision_tree(args.baseline) as tree:
                columns[f"base {args.baseline}"[:13]] = run_measurement(tree, args.baseline, stand_in, args)
        columns["this tree"] = run_measurement(ROOT, "this tree", stand_in, args)
    print_table(columns, args)
    sent = all_sent(columns)
    print(f"\nledger: every row of every round `sent`: {'yes' if sent else 'NO'}")
    return 0 if sent else 1


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--emails", type=int, default=20_000, help="pending rows per round (default 20,000)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--point", choices=("unbound", "latency", "both"), default="both")
    p.add_argument("--baseline", default="f8125ff", help="revision measured beside this tree; `none` to skip")
    p.add_argument("--floor-emails", type=int, default=2_000, help="calls per floor measurement (default 2,000)")
    p.add_argument("--unbound-rate", type=float, default=100_000)
    p.add_argument("--unbound-threads", type=int, default=4)
    p.add_argument("--latency-rate", type=float, default=400)
    p.add_argument("--latency-threads", type=int, default=24)
    p.add_argument("--latency", type=float, default=0.05, help="the stand-in's answer delay at the latency point")
    p.add_argument("--redis-db", type=int, default=2, help="the limiter's Redis db (the benchmarks' db 2)")
    p.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)  # the measurement subprocess
    p.add_argument("--results", help=argparse.SUPPRESS)
    p.add_argument("--label", help=argparse.SUPPRESS)
    p.add_argument("--nginx-pid", type=int, help=argparse.SUPPRESS)
    p.add_argument("--endpoints", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.emails < 1 or args.rounds < 1 or args.floor_emails < 1:
        parser().error("--emails, --rounds and --floor-emails must be at least 1")
    if args.measure:
        measure(args)
        return 0
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())

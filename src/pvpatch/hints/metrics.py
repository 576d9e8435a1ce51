"""Prometheus metrics for hostd and for guests, and a bounded server for them.

One prefix, `pvpatch_`, then the side: `pvpatch_hostd_*` (the publisher) and `pvpatch_guest_*`
(a process running pvpatch.auto()).  Ratios are 0..1 and times are seconds, as Prometheus
conventions ask; the page's hundredths of a percent are converted here.

The server answers GET /metrics with a fixed pool of worker threads fed by a bounded queue: a
connection that finds the queue full is closed at once, and every connection is dropped after
`timeout_s` without progress.  So a thousand idle connections cost a thousand closed sockets,
not a thousand threads.

prometheus_client is imported where it is used: the commands that only read the page start
faster without it.
"""
from __future__ import annotations

import http.server
import logging
import os
import queue
import socket
import threading

from ..errors import PvpatchError
from . import abi

log = logging.getLogger("pvpatch.hints")

DEFAULT_ADDR = "127.0.0.1"


class MetricsError(PvpatchError, ValueError):
    """Bad metrics arguments, or the server cannot listen; the message names which."""


def check_port(port, what: str = "metrics port") -> int | None:
    if port is None:
        return None
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise MetricsError(f"{what} {port!r} is not a TCP port (an int 0..65535; 0 picks one)")
    return port


class _Handler(http.server.BaseHTTPRequestHandler):
    server_version = "pvpatch-metrics"

    def do_GET(self):  # noqa: N802 (http.server's naming)
        from prometheus_client import generate_latest
        from prometheus_client.exposition import CONTENT_TYPE_LATEST
        if self.path.split("?")[0] not in ("/", "/metrics"):
            self.send_error(404, "try /metrics")
            return
        body = generate_latest(self.server.registry)
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE_LATEST)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # no line per scrape on stderr
        pass


class _Server(http.server.HTTPServer):
    daemon_threads = True

    def __init__(self, addr, port, registry, workers, backlog, timeout_s):
        if ":" in addr:
            self.address_family = socket.AF_INET6
        self.registry = registry
        self.request_queue_size = 128  # the kernel's accept queue; ours is `backlog`
        self.timeout_s = timeout_s
        self.dropped = 0
        self._q: queue.Queue = queue.Queue(maxsize=backlog)
        super().__init__((addr, port), _Handler)
        self._workers = [threading.Thread(target=self._work, name=f"pvpatch-metrics-{i}",
                                          daemon=True) for i in range(workers)]

    def start_workers(self):
        started = []
        try:
            for t in self._workers:
                t.start()
                started.append(t)
        except BaseException:
            for _ in started:
                self._q.put(None)
            raise

    def process_request(self, request, client_address):
        request.settimeout(self.timeout_s)
        try:
            self._q.put_nowait((request, client_address))
        except queue.Full:
            self.dropped += 1
            self.shutdown_request(request)

    def _work(self):
        while True:
            item = self._q.get()
            if item is None:
                return
            request, client_address = item
            try:
                self.finish_request(request, client_address)
            except Exception:  # a client that vanished or timed out: its problem, not ours
                pass
            finally:
                self.shutdown_request(request)

    def stop(self):
        for _ in self._workers:
            self._q.put(None)
        for t in self._workers:
            if t.is_alive():
                t.join(self.timeout_s + 1)


class MetricsServer:
    """Serve `registry` on http://addr:port/metrics (port 0 picks a free one) from `workers`
    threads; at most `backlog` connections wait; each is dropped after `timeout_s` idle."""

    def __init__(self, registry, port: int, addr: str = DEFAULT_ADDR, *,
                 workers: int = 2, backlog: int = 16, timeout_s: float = 5.0):
        check_port(port)
        if not isinstance(addr, str) or not addr:
            raise MetricsError(f"metrics address {addr!r} is not a host address")
        try:
            self.server = _Server(addr, port, registry, workers, backlog, timeout_s)
        except (OSError, OverflowError) as e:
            raise MetricsError(f"metrics on {addr}:{port}: cannot listen: "
                               f"{getattr(e, 'strerror', None) or e}") from None
        self.addr = addr
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever,
                                        kwargs={"poll_interval": 0.5},
                                        name="pvpatch-metrics", daemon=True)
        try:
            self.server.start_workers()
            self._thread.start()
        except BaseException:
            self.server.stop()
            self.server.server_close()
            raise

    @property
    def url(self) -> str:
        host = f"[{self.addr}]" if ":" in self.addr else self.addr
        return f"http://{host}:{self.port}/metrics"

    @property
    def threads(self) -> list[threading.Thread]:
        return [self._thread, *self.server._workers]

    def close(self) -> None:
        if self._thread.is_alive():
            self.server.shutdown()
        self.server.stop()
        self.server.server_close()


def _ratio(v: int) -> float:
    """Hundredths of a percent (abi) -> 0..1; UNKNOWN -> NaN."""
    return float("nan") if v == abi.UNKNOWN else v / (100 * abi.PERCENT_SCALE)


class HostdMetrics:
    """What hostd publishes, as Prometheus sees it (pvpatch_hostd_*)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge
        r = self.registry = CollectorRegistry()
        p = "pvpatch_hostd_"
        self.hint = Gauge(p + "hint_active", "Hint in force (1) or not (0)", ["hint"], registry=r)
        self.ever = Gauge(p + "hint_ever", "Hint given at least once (1) or never (0)", ["hint"],
                          registry=r)
        self.generation = Gauge(p + "generation", "Generation of the hint page", registry=r)
        self.publications = Counter(p + "publications", "Pages published", registry=r)
        self.changes = Counter(p + "changes", "Publications that moved the generation (guests "
                                              "woken)", registry=r)
        self.repairs = Counter(p + "page_repairs", "Repairs of the page after something was "
                                                   "done to it", ["kind"], registry=r)
        self.source = Gauge(p + "source_available", "Source available (1) or not (0)",
                            ["source"], registry=r)
        self.online_cpus = Gauge(p + "online_cpus", "Online CPUs", registry=r)
        self.runnable = Gauge(p + "runnable_tasks", "Runnable tasks, the publisher excluded",
                              registry=r)
        self.steal = Gauge(p + "steal_ratio", "Share of CPU time stolen by the hypervisor "
                                              "over the last interval (0..1)", registry=r)
        self.psi = Gauge(p + "psi_cpu_some_avg10_ratio", "PSI cpu some avg10 (0..1)",
                         registry=r)
        self.quota = Gauge(p + "cgroup_quota_cpus", "cgroup CPU quota in CPUs (0: none)",
                           registry=r)
        self.throttled = Gauge(p + "cgroup_throttled_ratio", "Share of cgroup periods "
                                                             "throttled (0..1)", registry=r)
        self._repairs_seen: dict[str, int] = {}

    def update(self, page: abi.HintPage, moved: bool, sources, repairs: dict) -> None:
        for bit, name in abi.HINTS.items():
            self.hint.labels(name).set(1 if page.active_hints & bit else 0)
            self.ever.labels(name).set(1 if page.ever_hints & bit else 0)
        self.generation.set(page.generation)
        self.publications.inc()
        if moved:
            self.changes.inc()
        for kind, n in repairs.items():
            c = self.repairs.labels(kind)
            if n > self._repairs_seen.get(kind, 0):
                c.inc(n - self._repairs_seen.get(kind, 0))
            self._repairs_seen[kind] = n
        for s in sources:
            self.source.labels(s.name).set(1 if s.available else 0)
        nan = float("nan")
        self.online_cpus.set(nan if page.online_cpus == abi.UNKNOWN else page.online_cpus)
        self.runnable.set(nan if page.runnable == abi.UNKNOWN else page.runnable)
        self.steal.set(_ratio(page.steal))
        self.psi.set(_ratio(page.psi_some_avg10))
        self.throttled.set(_ratio(page.cg_throttled))
        self.quota.set(nan if page.cg_quota_mcpu == abi.UNKNOWN else page.cg_quota_mcpu / 1000)


PAGE_STATUSES = ("usable", "missing", "untrusted", "invalid", "stale", "stopped")


class GuestMetrics:
    """What a guest's pvpatch.auto() does (pvpatch_guest_*).  Thread-safe: prometheus_client's
    metrics are; the textfile write is serialised here."""

    def __init__(self, groups: dict[str, tuple[str, str]], textfile: str | None = None):
        from prometheus_client import CollectorRegistry, Counter, Gauge
        r = self.registry = CollectorRegistry()
        p = "pvpatch_guest_"
        self.textfile = textfile
        self._lock = threading.Lock()
        self.variant = Gauge(p + "variant", "Variant in force per group (1) as last switched "
                                            "by the agent", ["group", "variant"], registry=r)
        self.switches = Counter(p + "switches", "Switches applied", registry=r)
        self.refusals = Counter(p + "switch_refusals", "Switch attempts that failed (refused "
                                                       "or raised)", registry=r)
        self.retries = Counter(p + "switch_retries", "Retries of a failed switch", registry=r)
        self.page_usable = Gauge(p + "hint_page_usable", "Hint page usable (1) or not (0: the "
                                                         "safe default)", registry=r)
        self.page_status = Gauge(p + "hint_page_status", "Hint page status (1 for the current "
                                                         "one)", ["status"], registry=r)
        self.latency = Gauge(p + "reaction_latency_seconds", "Publication to switch complete, "
                                                             "last switch caused by a "
                                                             "publication", registry=r)
        self.errors = Counter(p + "errors", "Unexpected exceptions caught (the component was "
                                            "restarted)", ["component"], registry=r)
        self.pending = Gauge(p + "policy_mismatch", "1 while the variants in force differ from "
                                                    "what the policy wants (a switch pending or "
                                                    "being retried)", registry=r)
        for g, pair in groups.items():
            for v in pair:
                self.variant.labels(g, v).set(0)
        for s in PAGE_STATUSES:
            self.page_status.labels(s).set(0)
        for c in ("notifier", "policy", "worker"):
            self.errors.labels(c)
        self.latency.set(float("nan"))

    def observed(self, status: str) -> None:
        for s in PAGE_STATUSES:
            self.page_status.labels(s).set(1 if s == status else 0)
        self.page_usable.set(1 if status == "usable" else 0)
        self.flush()

    def switched(self, ev, in_force: dict[str, str], groups, pending: bool) -> None:
        if ev.ok:
            self.switches.inc()
            if ev.latency_s is not None:
                self.latency.set(ev.latency_s)
        else:
            self.refusals.inc()
        if ev.attempt > 1:
            self.retries.inc()
        for g, pair in groups.items():
            for v in pair:
                self.variant.labels(g, v).set(1 if in_force.get(g) == v else 0)
        self.pending.set(1 if pending else 0)
        self.flush()

    def error(self, component: str) -> None:
        self.errors.labels(component).inc()
        self.flush()

    def flush(self) -> None:
        """Write the textfile for node_exporter's textfile collector (atomically: a temporary
        file renamed over it), if one was given."""
        if self.textfile is None:
            return
        from prometheus_client.exposition import write_to_textfile
        with self._lock:
            try:
                write_to_textfile(self.textfile, self.registry)
            except OSError as e:
                log.warning("guest metrics: cannot write %s: %s", self.textfile, e.strerror)


def check_textfile(path) -> str | None:
    if path is None:
        return None
    if not isinstance(path, (str, os.PathLike)):
        raise MetricsError(f"metrics textfile {path!r} is not a path")
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path)) or "."
    if not os.path.isdir(d):
        raise MetricsError(f"metrics textfile {path}: directory {d} does not exist")
    if not path.endswith(".prom"):
        raise MetricsError(f"metrics textfile {path}: node_exporter's textfile collector reads "
                           "only files ending in .prom")
    return path

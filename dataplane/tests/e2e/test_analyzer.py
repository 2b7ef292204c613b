"""The analyzer's archive end to end: a scripted session through the gateway (official Python
SDK client against the Python SDK server), its spool ingested into Parquet, read back by
independent engines (pyarrow, DuckDB) and by the analyzer's SQL, views and replay. Ingesting
again — the same spool or a copy of it — never duplicates an event."""

import collections
import json
import shutil
import subprocess
import time

import duckdb
import httpx
import pyarrow.dataset as ds

from conftest import ANALYZER, HERE, NODE, py_client, spool_events
from test_sdk_clients import ACCEPT


def analyzer(archive, *args, check=True):
    r = subprocess.run([str(ANALYZER), "--archive", str(archive), *args], capture_output=True, text=True, timeout=300)
    if check:
        assert r.returncode == 0, r.stderr[-3000:]
    return r


def sql(archive, q):
    r = analyzer(archive, "sql", q, "--format", "json")
    return [json.loads(l) for l in r.stdout.splitlines() if l.strip()]


SMALL_SUMS = ("default = \"allow\"\n[[rule]]\nid = \"small-sums\"\nwhen = 'tool.name == \"add\" && args.a > 10'\naction = \"deny\"\n"
              "reason = \"sums above 10 are not allowed\"\n")


def small_sums_policy(tmp_path) -> str:
    """A policy denying `add` with a > 10 (so three such calls are probing); its config section."""
    (tmp_path / "policy.toml").write_text(SMALL_SUMS)
    return f'[policy]\nfile = "{tmp_path / "policy.toml"}"\n'


def kafka_recording(tmp_path, kafka, topic: str) -> str:
    """Recording to a spool in tmp_path and on to `topic` (events and approvals)."""
    return (f'[recording]\n[recording.spool]\ndir = "{tmp_path / "spool"}"\n'
            f'[recording.kafka]\nbrokers = "{kafka.bootstrap}"\nevents_topic = "{topic}"\napprovals_topic = "{topic}"\nlinger = "2ms"\n')


def probe(url: str, sessions: int = 1, sums=(11, 12, 13)) -> list:
    """`sessions` MCP sessions (official Python SDK client), each calling `add` with a = each of
    `sums`; per call "ok" or the JSON-RPC error code."""
    import asyncio

    from mcp import ClientSession
    from mcp.client.streamable_http import streamablehttp_client
    from mcp.shared.exceptions import McpError

    async def go():
        out = []
        for _ in range(sessions):
            async with streamablehttp_client(url) as (read, write, _):
                async with ClientSession(read, write) as s:
                    await s.initialize()
                    for a in sums:
                        try:
                            await s.call_tool("add", {"a": a, "b": 1})
                            out.append("ok")
                        except McpError as e:
                            out.append(e.error.code)
        return out

    return asyncio.run(go())


def test_spool_to_parquet_reads_the_same_everywhere_and_never_twice(py_json, gateway, tmp_path):
    g = gateway([{"path": "/mcp", "upstream": py_json}, {"path": "/api", "upstream": py_json.rsplit("/", 1)[0] + "/api", "kind": "http"}])
    py_client(g.url(), "py")
    # A plain HTTP call (the server answers 404 to it) carries an address in its URL.
    import httpx
    status = httpx.get(g.url("/api/users/bob%40example.com?page=2"), timeout=10).status_code
    assert g.proc.stop() == 0
    spooled = spool_events(g.spool)
    ids = {e["id"] for e in spooled}
    assert len(ids) == len(spooled) > 20
    archive = tmp_path / "archive"

    st = json.loads(analyzer(archive, "ingest", "--spool", str(g.spool)).stdout)
    assert st["read"] == len(spooled) and st["written"] == len(spooled) and st["duplicates"] == 0, st
    files = list((archive / "events").rglob("*.parquet"))
    assert files and all(f.parent.name.startswith("hour=") and f.parent.parent.name.startswith("date=") for f in files)
    assert not list(archive.rglob("*.tmp")), "no temporary file is left behind"

    # Independent engines read the same events.
    t = ds.dataset(str(archive / "events"), format="parquet", partitioning="hive").to_table()
    assert t.num_rows == len(spooled) and set(t.column("id").to_pylist()) == ids
    assert str(t.schema.field("ts").type) == "timestamp[us, tz=UTC]"
    con = duckdb.connect()
    glob = str(archive / "events" / "**" / "*.parquet")
    n, kinds = con.execute(f"SELECT count(*), count(DISTINCT kind) FROM read_parquet('{glob}', hive_partitioning=true)").fetchone()
    assert n == len(spooled) and kinds >= 4
    by_kind = dict(con.execute(f"SELECT kind, count(*) FROM read_parquet('{glob}') GROUP BY kind").fetchall())
    want = {}
    for e in spooled:
        want[e["kind"]] = want.get(e["kind"], 0) + 1
    assert by_kind == want
    # Payloads stay JSON text, and struct columns carry the nested records.
    add = con.execute(f"SELECT payload FROM read_parquet('{glob}') WHERE kind = 'request' AND tool = 'add'").fetchone()[0]
    assert json.loads(add)["arguments"] == {"a": 2, "b": 3} or "arguments" in json.loads(add)

    # Ingest again, and a copy of the spool (another cursor): nothing is written twice.
    st = json.loads(analyzer(archive, "ingest", "--spool", str(g.spool)).stdout)
    assert st["written"] == 0, st
    copy = tmp_path / "spool-copy"
    shutil.copytree(g.spool, copy)
    st = json.loads(analyzer(archive, "ingest", "--spool", str(copy)).stdout)
    assert st["read"] == len(spooled) and st["written"] == 0 and st["duplicates"] == len(spooled), st
    assert ds.dataset(str(archive / "events"), format="parquet", partitioning="hive").count_rows() == len(spooled)

    # The analyzer's own SQL and views.
    rows = sql(archive, "SELECT count(*) AS n FROM events")
    assert rows == [{"n": len(spooled)}]
    calls = sql(archive, "SELECT tool, arguments, result, latency_us FROM tool_calls ORDER BY ts")
    assert calls and all(c["result"] is not None for c in calls), calls
    assert {c["tool"] for c in calls} >= {"add"}
    sessions = sql(archive, "SELECT DISTINCT session FROM events WHERE session IS NOT NULL")
    assert len(sessions) == 1
    sid = sessions[0]["session"]

    out = analyzer(archive, "replay", sid).stdout
    lines = out.splitlines()
    assert any("→ initialize" in l for l in lines), out[:2000]
    assert any("→ tools/call add" in l for l in lines) and any("← answer" in l and " add" in l for l in lines), out[:3000]
    js = json.loads(analyzer(archive, "replay", sid, "--json").stdout)
    assert [e["id"] for e in js] == [e["id"] for e in sorted((e for e in spooled if e.get("session") == sid), key=lambda e: (e["ts"], e["id"]))]

    # CSV and Parquet outputs.
    csv = analyzer(archive, "sql", "SELECT kind, count(*) AS n FROM events GROUP BY kind ORDER BY kind", "--format", "csv").stdout
    assert csv.splitlines()[0] == "kind,n"
    analyzer(archive, "sql", "SELECT id, kind FROM events", "--format", "parquet", "--out", str(tmp_path / "ids.parquet"))
    assert ds.dataset(str(tmp_path / "ids.parquet")).count_rows() == len(spooled)
    bad = analyzer(archive, "sql", "SELECT nope FROM events", check=False)
    assert bad.returncode == 2 and "nope" in bad.stderr

    # The plain HTTP call, in the analyzer's view and in DuckDB, its URL as recorded (masked).
    http = sql(archive, "SELECT direction, http_method, http_path, status FROM http_messages ORDER BY ts")
    assert [(h["direction"], h["http_method"], h.get("status")) for h in http] == [("request", "GET", None), ("response", "GET", status)], http
    assert http[0]["http_path"] == http[1]["http_path"] and http[0]["http_path"].startswith("/api/users/") and "bob" not in http[0]["http_path"], http
    plain = dict(con.execute(f"SELECT kind, count(*) FROM read_parquet('{glob}') WHERE http_method = 'GET' GROUP BY kind").fetchall())
    assert plain == {"document": 2, "findings": 1}, plain


def test_gateway_to_kafka_to_analyzer_to_the_alerts_topic(py_json, gateway, kafka, tmp_path):
    """A session probes the policy (three refused calls to one tool with different arguments);
    its events go through the real Kafka broker, the analyzer ingests them with a consumer
    group, the probing rule fires, and the alert arrives on the alerts topic with evidence
    that is in the archive."""
    from conftest import BROKER
    from test_recording import topics

    ev, _ = topics(kafka, "e2e-analyzer")
    alerts_topic = "e2e-analyzer.alerts"
    subprocess.run([str(BROKER), "topics", str(kafka.port), f"{alerts_topic}:2"], check=True, capture_output=True)
    g = gateway([{"path": "/mcp", "upstream": py_json}], extra=small_sums_policy(tmp_path) + kafka_recording(tmp_path, kafka, ev))
    assert probe(g.url(), sums=(1, 11, 12, 13)) == ["ok", -32009, -32009, -32009]
    # A body that is not JSON: refused before any stage reads it, and recorded as such.
    r = httpx.post(g.url(), content=b'{"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {"name": "add", "arguments": {"a": 1', headers=ACCEPT, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["code"] == -32700, r.text
    assert g.proc.stop() == 0
    emitted = len(spool_events(tmp_path / "spool"))
    # Another producer's message on the topic: set aside, not fatal, the events archived.
    from confluent_kafka import Producer
    p = Producer({"bootstrap.servers": kafka.bootstrap})
    p.produce(ev, key=b"stray", value=b'{"greeting": "not a session event"}')
    p.flush(10)
    archive = tmp_path / "archive"
    st = json.loads(analyzer(archive, "ingest", "--kafka", kafka.bootstrap, "--topic", ev, "--group", "e2e-analyzer", "--idle-secs", "20").stdout)
    assert st["written"] == emitted and st["duplicates"] == 0 and st["rejected"] == 1, (st, emitted)
    stray = [json.loads(l) for l in (archive / "_rejected" / "rejected.jsonl").read_text().splitlines()]
    assert [r["doc"] for r in stray] == ['{"greeting": "not a session event"}'], stray
    # The group's offsets were committed: a second run has nothing new.
    st = json.loads(analyzer(archive, "ingest", "--kafka", kafka.bootstrap, "--topic", ev, "--group", "e2e-analyzer", "--idle-secs", "5").stdout)
    assert st["read"] == 0, st

    r = analyzer(archive, "chains", "--kafka", kafka.bootstrap, "--topic", alerts_topic)
    alerts = [json.loads(l) for l in r.stdout.splitlines() if l.strip()]
    probing = [a for a in alerts if a["rule"] == "probing"]
    assert len(probing) == 1, alerts
    ids = {row["id"] for row in sql(archive, "SELECT id FROM events")}
    assert len(probing[0]["evidence"]) == 3 and set(probing[0]["evidence"]) <= ids
    got = kafka.consume(alerts_topic, want=len(alerts), timeout=60)
    assert [m[3]["id"] for m in got if m[3]["rule"] == "probing"] == [probing[0]["id"]]
    # Running the rules again raises nothing new; the alert is in the archive's alerts table.
    r = analyzer(archive, "chains")
    assert r.stdout.strip() == "", r.stdout
    assert sql(archive, "SELECT rule, cardinality(evidence) AS n FROM alerts WHERE rule = 'probing'") == [{"rule": "probing", "n": 3}]

    # The audit report of the period: JSON data, Markdown, and HTML checked in a real browser.
    period = ["--from", "2000-01-01T00:00:00Z", "--to", "2100-01-01T00:00:00Z"]
    rep = json.loads(analyzer(archive, "report", *period, "--format", "json").stdout)
    assert rep["summary"]["blocked"] == 3 and rep["summary"]["alerts"] == 1 and rep["summary"]["sessions"] == 1, rep["summary"]
    blocked = next(s for s in rep["sections"] if s["id"] == "blocked")
    assert [r["rule"] for r in blocked["rows"]] == ["small-sums"] * 3
    assert rep["summary"]["refused_before_inspection"] == 1, rep["summary"]
    protocol = next(s for s in rep["sections"] if s["id"] == "protocol")
    assert [(r["status"], r["reason"], r["n"], r["clients"]) for r in protocol["rows"]] == [(400, "the body is not JSON the gateway can read", 1, 1)], protocol
    md = analyzer(archive, "report", *period, "--format", "md").stdout
    assert "## Chain alerts" in md and "| probing | medium | 1 | 1 |" in md, md
    html = tmp_path / "report.html"
    analyzer(archive, "report", *period, "--out", str(html))
    shot = tmp_path / "report.png"
    r = subprocess.run([NODE, str(HERE / "clients" / "report_page.mjs"), str(html), str(shot)], capture_output=True, text=True, timeout=90)
    assert r.returncode == 0, r.stderr[-3000:]
    page = json.loads(r.stdout.strip().splitlines()[-1])
    assert page["title"] == "Sluice audit report"
    ids = [s["id"] for s in page["sections"]]
    assert ids == ["summary", "tools", "http", "identities", "decisions", "blocked", "protocol", "findings", "approvals", "server_requests", "alerts", "pins"], ids
    assert page["charts"] >= 3 and any("blocked" in c and c.startswith("3") for c in page["cards"]), page
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(png[20:24], "big") > 900, "a full page, taller than one screen"


def metrics(port: int) -> dict:
    """The analyzer's /metrics as {name or name{labels}: value}."""
    import httpx

    out = {}
    for line in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text.splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out


def wait_for(what, check, timeout=90.0):
    import time

    end = time.time() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.time() < end, f"timed out waiting for {what}"
        time.sleep(0.3)


def test_run_shares_partitions_alerts_while_running_and_takes_over(py_json, gateway, kafka, tmp_path):
    """`run` in continuous mode, two instances in one consumer group over a 4-partition topic:
    they split the partitions; probing sessions through the gateway raise their alerts on the
    alerts topic while both keep running (before any file rotation is due); the lag metric
    returns to 0; when one instance stops, the other takes its partitions over and alerts on
    the next sessions; in the end the archive holds every emitted event exactly once."""
    import signal
    import time

    from conftest import BROKER, free_ports
    from test_recording import topics

    ev, _ = topics(kafka, "e2e-run")
    alerts_topic = "e2e-run.alerts"
    subprocess.run([str(BROKER), "topics", str(kafka.port), f"{alerts_topic}:2"], check=True, capture_output=True)
    g = gateway([{"path": "/mcp", "upstream": py_json}], extra=small_sums_policy(tmp_path) + kafka_recording(tmp_path, kafka, ev))
    archive = tmp_path / "archive"
    ports = free_ports(2)
    procs = [
        subprocess.Popen([str(ANALYZER), "--archive", str(archive), "run", "--kafka", kafka.bootstrap, "--topic", ev,
                          "--group", "e2e-run", "--alerts-topic", alerts_topic, "--detect-secs", "1", "--flush-secs", "3600",
                          "--metrics", f"127.0.0.1:{p}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for p in ports
    ]
    try:
        def assigned(ps):
            try:
                return [metrics(p)["sluice_analyzer_assigned_partitions"] for p in ps]
            except Exception:
                return None

        split = wait_for("both instances to own partitions", lambda: (a := assigned(ports)) and all(x > 0 for x in a) and sum(a) == 4 and a)
        assert split == [2, 2], split

        probe(g.url(), sessions=6)
        got = kafka.consume(alerts_topic, timeout=60, group="e2e-run-check-1", until=lambda m: len(m) >= 6)
        probing = {m[3]["id"]: m[3] for m in got if m[3]["rule"] == "probing"}
        assert len(probing) == 6 and len({a["session"] for a in probing.values()}) == 6, got
        # Near real time: raised from events not yet in any file (rotation is an hour away; a
        # file may hold what was consumed before the partitions were split).
        files = list((archive / "events").rglob("*.parquet"))
        in_files = set(ds.dataset(files, format="parquet").to_table(columns=["id"]).column("id").to_pylist()) if files else set()
        assert not in_files & {e for a in probing.values() for e in a["evidence"]}
        wait_for("the lag to drain", lambda: all(
            sum(v for k, v in metrics(p).items() if k.startswith("sluice_analyzer_consumer_lag_events")) == 0 for p in ports))

        # One instance stops (writing what it holds, committing); the other takes over.
        procs[1].send_signal(signal.SIGTERM)
        assert procs[1].wait(timeout=60) == 0, procs[1].stderr.read()[-3000:]
        assert list((archive / "events").rglob("*.parquet")), "the stopping instance wrote its events"
        wait_for("the survivor to own all partitions", lambda: assigned(ports[:1]) == [4])
        probe(g.url(), sessions=2)
        got = kafka.consume(alerts_topic, timeout=60, group="e2e-run-check-2", until=lambda m: len(m) >= 8)
        ids = [m[3]["id"] for m in got if m[3]["rule"] == "probing"]
        assert len(ids) == 8 == len(set(ids)), got
        # The gateway's last events (session ends, its stop) reach the survivor too.
        assert g.proc.stop() == 0
        time.sleep(3)
        wait_for("the lag to drain", lambda: sum(v for k, v in metrics(ports[0]).items() if k.startswith("sluice_analyzer_consumer_lag_events")) == 0)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        codes = [p.wait(timeout=60) for p in procs]
    assert codes == [0, 0], [p.stderr.read()[-3000:] for p in procs]
    emitted = {e["id"] for e in spool_events(tmp_path / "spool")}
    rows = sql(archive, "SELECT count(*) AS n, count(DISTINCT id) AS d FROM events")
    assert rows == [{"n": len(emitted), "d": len(emitted)}], (rows, len(emitted))
    assert {r["id"] for r in sql(archive, "SELECT id FROM events")} == emitted
    assert sql(archive, "SELECT count(*) AS n FROM alerts WHERE rule = 'probing'") == [{"n": 8}]


def test_run_from_a_growing_spool(py_json, gateway, tmp_path):
    """`run --spool` (a gateway without Kafka): the analyzer follows the spool as the gateway
    writes it, raises the probing alert while the events are in no file yet, and on SIGTERM
    archives every event the gateway recorded, once."""
    import signal

    from conftest import free_port

    spool = tmp_path / "spool"
    extra = small_sums_policy(tmp_path) + f'[recording]\n[recording.spool]\ndir = "{spool}"\nfsync_interval = "5ms"\n'
    g = gateway([{"path": "/mcp", "upstream": py_json}], extra=extra)
    archive = tmp_path / "archive"
    port = free_port()
    p = subprocess.Popen([str(ANALYZER), "--archive", str(archive), "run", "--spool", str(spool), "--detect-secs", "1",
                          "--flush-secs", "3600", "--metrics", f"127.0.0.1:{port}"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for("the metrics listener", lambda: _up(port))
        assert probe(g.url()) == [-32009, -32009, -32009]
        wait_for("the probing alert", lambda: metrics(port)["sluice_analyzer_alerts_total"] >= 1)
        assert [r["rule"] for r in sql(archive, "SELECT rule FROM alerts")] == ["probing"]
        assert not list((archive / "events").rglob("*.parquet")), "detected before any file was written"
        assert g.proc.stop() == 0
        emitted = {e["id"] for e in spool_events(spool)}
        wait_for("every spooled event read", lambda: metrics(port)["sluice_analyzer_events_read_total"] == len(emitted))
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=60) == 0, p.stderr.read()[-3000:]
    finally:
        if p.poll() is None:
            p.kill()
    assert {r["id"] for r in sql(archive, "SELECT id FROM events")} == emitted
    assert sql(archive, "SELECT count(*) AS n FROM events") == [{"n": len(emitted)}]


def _up(port: int) -> bool:
    try:
        metrics(port)
        return True
    except Exception:
        return False


def test_a_value_from_an_mcp_answer_sent_on_to_a_plain_http_api_alerts(py_json, gateway, tmp_path):
    """`taint-to-http` end to end: an agent (API key) gets an IBAN back from an MCP tool and
    then posts it to a plain HTTP API route; another agent posts the same IBAN without having
    received it. The analyzer follows the value by its keyed fingerprint across the two
    channels and alerts for the first agent only, with both findings as evidence. (Personal
    data in answers is logged, not masked, here: agents that need it see it, and the chain is
    what remains to watch.)"""
    import hashlib

    keys = {"agent-7": "sk-agent-7-2b1f9c", "agent-8": "sk-agent-8-6d0e4a"}
    ident = "[identity]\n" + "".join(f'[[identity.api_key]]\nsubject = "{s}"\nsha256 = "{hashlib.sha256(k.encode()).hexdigest()}"\n' for s, k in keys.items())
    extra = ident + '[detect.request]\npii = "log"\n[detect.response]\npii = "log"\n'
    g = gateway([{"path": "/mcp", "upstream": py_json}, {"path": "/api", "upstream": py_json.rsplit("/", 1)[0] + "/api", "kind": "http"}], extra=extra)
    iban = "GB82WEST12345698765432"
    with httpx.Client(timeout=10) as c:
        h = {**ACCEPT, "x-api-key": keys["agent-7"]}
        init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
                "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "taint", "version": "1"}}}
        r = c.post(g.url(), json=init, headers=h)
        assert r.status_code == 200, r.text
        h["mcp-session-id"] = r.headers["mcp-session-id"]
        assert c.post(g.url(), json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=h).status_code == 202
        call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "shout", "arguments": {"text": f"refund to {iban} today"}}}
        r = c.post(g.url(), json=call, headers=h)
        assert iban in r.text, r.text
        for who in ["agent-7", "agent-8"]:
            r = c.post(g.url("/api/payouts"), json={"iban": iban, "amount": 10}, headers={"x-api-key": keys[who]})
            assert r.status_code == 404, r.text  # the test server has no such API; the request went through
    assert g.proc.stop() == 0
    spooled = spool_events(g.spool)
    archive = tmp_path / "archive"
    analyzer(archive, "ingest", "--spool", str(g.spool))
    alerts = [json.loads(l) for l in analyzer(archive, "chains").stdout.splitlines() if l.strip()]
    chained = [a for a in alerts if a["rule"] == "taint-to-http"]
    assert len(chained) == 1, alerts
    by_id = {e["id"]: e for e in spooled}
    out, sent = (by_id[i] for i in chained[0]["evidence"])
    assert (out["kind"], out["direction"], out["tool"], out["identity"]["subject"]) == ("findings", "response", "shout", "agent-7"), out
    assert (sent["kind"], sent["http_method"], sent["identity"]["subject"]) == ("findings", "POST", "agent-7"), sent
    assert chained[0]["session"] == out["session"] and chained[0]["subject"] == "agent-7"
    # Followed without being kept: the value is in no event and no alert, only its fingerprint.
    assert iban not in json.dumps(spooled) and iban not in json.dumps(alerts)
    assert out["findings"][0]["fingerprint"] == sent["findings"][0]["fingerprint"]
    # The caller's activity across its session and the plain API, in one transcript.
    lines = analyzer(archive, "replay", "--subject", "agent-7").stdout.splitlines()
    sid = out["session"]
    assert any(f"[{sid}]  → tools/call shout" in l for l in lines), lines
    posts = [l for l in lines if "→ HTTP POST" in l]
    assert len(posts) == 1 and "[http]  → HTTP POST /api/payouts [agent-7]" in posts[0] and iban not in posts[0], lines
    assert any("[http]  ← HTTP 404 POST /api/payouts" in l for l in lines), lines
    assert not any("agent-8" in l for l in lines)
    late = analyzer(archive, "replay", "--subject", "agent-7", "--from", "2100-01-01T00:00:00Z", check=False)
    assert late.returncode == 2 and "no events of agent-7" in late.stderr, late.stderr


def test_a_server_pressing_for_the_agents_model_alerts_and_shows_in_the_report(py_sse, gateway, tmp_path):
    """A server's `summarize` tool asks the agent's model three times in one session after the
    policy said no (`from = "server"`): gateway → spool → archive → the `server-overreach` rule
    alerts with the three refusals as evidence, and the audit report lists what servers asked."""
    import asyncio
    from mcp import ClientSession, types
    from mcp.client.streamable_http import streamablehttp_client

    (tmp_path / "policy.toml").write_text(
        'default = "allow"\n[[rule]]\nid = "no-sampling"\nfrom = "server"\n'
        "when = 'method == \"sampling/createMessage\"'\naction = \"deny\"\nreason = \"no model for servers\"\n")
    g = gateway([{"path": "/mcp", "upstream": py_sse}], extra=f'[policy]\nfile = "{tmp_path / "policy.toml"}"\n')

    async def sampling(ctx, params):
        return types.CreateMessageResult(role="assistant", model="m", content=types.TextContent(type="text", text="x"))

    async def session():
        async with streamablehttp_client(g.url()) as (read, write, _):
            async with ClientSession(read, write, sampling_callback=sampling) as s:
                await s.initialize()
                return [(await s.call_tool("summarize", {"text": f"doc {i}"})).isError for i in range(3)]

    assert asyncio.run(asyncio.wait_for(session(), 60)) == [True, True, True]
    g.proc.stop()
    archive = tmp_path / "archive"
    analyzer(archive, "ingest", "--spool", str(g.spool))
    alerts = [json.loads(l) for l in analyzer(archive, "chains").stdout.splitlines() if l.strip()]
    over = [a for a in alerts if a["rule"] == "server-overreach"]
    assert len(over) == 1 and len(over[0]["evidence"]) == 3, alerts
    refused = {r["id"] for r in sql(archive, "SELECT id FROM events WHERE kind = 'decision' AND method = 'sampling/createMessage'")}
    assert set(over[0]["evidence"]) == refused
    period = ["--from", "2000-01-01T00:00:00Z", "--to", "2100-01-01T00:00:00Z"]
    rep = json.loads(analyzer(archive, "report", *period, "--format", "json").stdout)
    server = next(s for s in rep["sections"] if s["id"] == "server_requests")
    assert [(r["method"], r["tool"], r["requests"], r["refused"]) for r in server["rows"]] == [("sampling/createMessage", "summarize", 3, 3)], server


def test_small_files_are_compacted_and_old_days_pruned(py_json, gateway, tmp_path):
    """Each ingest (and each flush of `run`) writes a file per hour: an hour's files merge
    into one once they are settled — the same rows, once, in DuckDB before and after — by
    `compact` and by `run` itself; `prune` removes whole days (a dry run nothing)."""
    import os
    import signal

    from conftest import free_port

    g = gateway([{"path": "/mcp", "upstream": py_json}])
    archive = tmp_path / "archive"
    glob = str(archive / "events" / "**" / "*.parquet")
    parquet = lambda: sorted((archive / "events").rglob("*.parquet"))
    ids = lambda: sorted(r[0] for r in duckdb.connect().execute(f"SELECT id FROM read_parquet('{glob}', hive_partitioning=true)").fetchall())

    def settle():
        old = time.time() - 7200
        for f in parquet():
            os.utime(f, (old, old))

    def compact(*args):
        out = [json.loads(l) for l in analyzer(archive, "compact", *args).stdout.splitlines()]
        return {o["table"]: o["compacted"] for o in out}

    for _ in range(3):
        py_client(g.url(), "py")
        analyzer(archive, "ingest", "--spool", str(g.spool))
    before = ids()
    files = parquet()
    assert len(files) >= 3 and len(before) == len(set(before)) > 20
    assert compact()["events"]["hours"] == 0, "just written: not settled"
    settle()
    c = compact()
    # Every file of an hour holding more than one (the hour may have turned between ingests).
    in_shared_hours = sum(n for n in collections.Counter(f.parent for f in files).values() if n > 1)
    assert in_shared_hours >= 2 and c["events"]["files_merged"] == in_shared_hours and c["events"]["duplicates"] == 0, c
    assert all(len(list(d.glob("*.parquet"))) == 1 for d in {f.parent for f in parquet()}), parquet()
    assert ids() == before, "the same events, once"
    assert sql(archive, "SELECT count(*) AS n FROM events") == [{"n": len(before)}]

    # `run` compacts by itself.
    py_client(g.url(), "py")
    assert g.proc.stop() == 0
    # Small files (several even if the hour turned meanwhile).
    analyzer(archive, "ingest", "--spool", str(g.spool), "--rows-per-file", "5")
    settle()
    assert len(parquet()) > len({f.parent for f in parquet()})
    after = ids()
    port = free_port()
    p = subprocess.Popen([str(ANALYZER), "--archive", str(archive), "run", "--spool", str(g.spool), "--compact-after-mins", "1",
                          "--metrics", f"127.0.0.1:{port}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for("the metrics listener", lambda: _up(port))
        wait_for("a compaction", lambda: metrics(port)["sluice_analyzer_compacted_hours_total"] >= 1)
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=60) == 0, p.stderr.read()[-3000:]
    finally:
        if p.poll() is None:
            p.kill()
    assert all(len(list(d.glob("*.parquet"))) == 1 for d in {f.parent for f in parquet()}), parquet()
    assert ids() == after and len(after) > len(before)

    # Retention: everything here is from today, so keeping one day keeps it all.
    days = sorted(r["date"] for r in sql(archive, "SELECT DISTINCT date FROM events"))
    kept = [json.loads(l) for l in analyzer(archive, "prune", "--keep-days", "1").stdout.splitlines()]
    assert all(d["date"] < days[-1] for d in kept), "only a day before today, had the test crossed midnight"
    days = sorted(r["date"] for r in sql(archive, "SELECT DISTINCT date FROM events"))
    snapshot = ids()
    dry = [json.loads(l) for l in analyzer(archive, "prune", "--before", "2999-01-01", "--dry-run").stdout.splitlines()]
    assert [(d["table"], d["date"], d["removed"]) for d in dry] == [("events", day, False) for day in days] and dry[0]["files"] >= 1, dry
    assert ids() == snapshot, "a dry run removes nothing"
    gone = [json.loads(l) for l in analyzer(archive, "prune", "--before", "2999-01-01", "--tables", "events,alerts").stdout.splitlines()]
    assert [(d["table"], d["removed"]) for d in gone] == [("events", True)] * len(days), gone
    assert parquet() == []
    bad = analyzer(archive, "prune", "--before", "last-week", check=False)
    assert bad.returncode == 2 and "YYYY-MM-DD" in bad.stderr
    bad = analyzer(archive, "prune", "--keep-days", "0", check=False)
    assert bad.returncode == 2 and "keep at least 1" in bad.stderr

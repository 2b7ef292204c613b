"""Policy end to end: tokens from a real OpenID Provider (npm oidc-provider), the official
Python SDK client, a real MCP server (Python SDK). What each group may call decides what it
sees in tools/list and what its calls get; refusals are JSON-RPC errors that say why, and every
decision is recorded with its rule."""

import asyncio
import json
import socket
import time

import httpx
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamablehttp_client
from mcp.shared.exceptions import McpError

from conftest import py_client, spool_events
from test_identity import ACCEPT, AUDIENCE, INIT, idp  # noqa: F401 (the OpenID Provider fixture)
from test_rebinding import reload
from test_recording import settled

POLICY = """
default = "deny"

[[rule]]
id = "protocol"
when = 'identity.authenticated && (method in ["initialize", "ping", "tools/list"] || method.startsWith("notifications/"))'
action = "allow"

[[rule]]
id = "shout-budget"
when = 'tool.name == "shout"'
action = "rate_limit"
rate = 2
per = "1m"
key = ["identity", "tool"]

[[rule]]
id = "no-failing"
when = 'tool.name == "fail"'
action = "deny"
reason = "the fail tool is switched off on this gateway; use another tool"

[[rule]]
id = "support-tools"
when = '"support" in identity.groups && tool.name in ["add", "shout", "fail"]'
action = "allow"
"""


def policy_gateway(gateway, idp, py_json, tmp_path):
    (tmp_path / "policy.toml").write_text(POLICY)
    extra = (f'[identity]\nissuer = "{idp.issuer}"\naudience = ["{AUDIENCE}"]\nagent_type_claim = "agent_type"\n'
             f'[policy]\nfile = "{tmp_path / "policy.toml"}"\n')
    return gateway([{"path": "/mcp", "upstream": py_json}], extra=extra)


async def session(url, token, script):
    async with streamablehttp_client(url, headers={"authorization": f"Bearer {token}"}) as (read, write, _):
        async with ClientSession(read, write) as s:
            await s.initialize()
            return await script(s)


async def try_call(s, name, args):
    try:
        r = await s.call_tool(name, args)
        return ("ok", r.content[0].text if r.content else None)
    except McpError as e:
        return ("error", e.error.code, e.error.message, (e.error.data or {}).get("reason", ""))


def test_each_group_sees_and_calls_only_what_the_policy_allows(idp, gateway, py_json, tmp_path):
    g = policy_gateway(gateway, idp, py_json, tmp_path)

    async def upstream_tools():
        async with streamablehttp_client(py_json) as (read, write, _):
            async with ClientSession(read, write) as s:
                await s.initialize()
                return sorted(t.name for t in (await s.list_tools()).tools)

    everything = asyncio.run(upstream_tools())
    assert {"add", "shout", "fail", "count", "ask_name", "summarize"} <= set(everything)

    async def support(s):
        listed = sorted(t.name for t in (await s.list_tools()).tools)
        return listed, [await try_call(s, "add", {"a": 2, "b": 3}), await try_call(s, "count", {"n": 2}),
                        await try_call(s, "fail", {"reason": "x"})]

    listed, (add, count, fail) = asyncio.run(session(g.url(), idp.token("support-agent"), support))
    # `fail` is denied outright, `count` and the rest allowed by no rule: hidden.
    assert listed == ["add", "shout"]
    assert add == ("ok", "5")
    assert count[:2] == ("error", -32009), count
    assert "no policy rule allows `support-agent` to call tool `count`" in count[3]
    assert fail[:2] == ("error", -32009) and "switched off" in fail[3], fail

    # A token for a group without rights: it may connect and list, it sees no tool, calls fail.
    async def intern(s):
        listed = [t.name for t in (await s.list_tools()).tools]
        return listed, await try_call(s, "add", {"a": 1, "b": 1})

    listed, add = asyncio.run(session(g.url(), idp.token("intern-agent"), intern))
    assert listed == []
    assert add[:2] == ("error", -32009) and "`intern-agent`" in add[3], add

    # Every decision is in the record with the deciding rule.
    want = {("add", "allow", "support-tools", "support-agent"), ("count", "deny", "default", "support-agent"),
            ("fail", "deny", "no-failing", "support-agent"), ("add", "deny", "default", "intern-agent")}
    deadline = time.time() + 15
    while True:
        decided = {(e.get("tool"), e["decision"]["action"], e["decision"]["rule"], e["identity"]["subject"])
                   for e in spool_events(g.spool)
                   if e["kind"] == "decision" and e["decision"]["stage"] == "policy" and e.get("method") == "tools/call"}
        if want <= decided or time.time() > deadline:
            break
        time.sleep(0.3)
    assert ("add", "allow", "support-tools", "support-agent") in decided
    assert ("count", "deny", "default", "support-agent") in decided
    assert ("fail", "deny", "no-failing", "support-agent") in decided
    assert ("add", "deny", "default", "intern-agent") in decided


def test_rate_limit_refuses_with_the_rule_and_a_wait(idp, gateway, py_json, tmp_path):
    g = policy_gateway(gateway, idp, py_json, tmp_path)
    tok = idp.token("support-agent")

    async def shouts(s):
        return [await try_call(s, "shout", {"text": f"hi {i}"}) for i in range(3)]

    got = asyncio.run(session(g.url(), tok, shouts))
    assert got[0][0] == "ok" and got[1][0] == "ok", got
    assert got[2][:2] == ("error", -32010), got
    assert "shout-budget" in got[2][3] and "retry in" in got[2][3], got



def test_a_batch_cannot_smuggle_a_denied_call(idp, gateway, raw_upstream, tmp_path):
    """Each element of a JSON-RPC batch is decided on its own; denied ones never reach the
    upstream and are answered in place. (No official SDK server takes batches any more — the
    2025-06-18 protocol dropped them — so this upstream is a plain socket that answers each
    element and remembers what it was sent.)"""
    received = []

    def handler(conn, head, body):
        req = json.loads(body)
        items = req if isinstance(req, list) else [req]
        received.extend(items)
        out = [{"jsonrpc": "2.0", "id": i["id"], "result": {"content": [{"type": "text", "text": "done"}]}} for i in items if "id" in i]
        data = json.dumps(out if isinstance(req, list) else out[0]).encode()
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nmcp-session-id: s-1\r\ncontent-length: "
                     + str(len(data)).encode() + b"\r\n\r\n" + data)

    up = raw_upstream(handler)
    g = policy_gateway(gateway, idp, up.url(), tmp_path)
    h = {**ACCEPT, "authorization": f"Bearer {idp.token('support-agent')}", "mcp-protocol-version": "2025-03-26"}
    batch = [
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "add", "arguments": {"a": 1, "b": 2}}},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "count", "arguments": {"n": 1}}},
        {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": 1, "progress": 1}},
        {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "fail", "arguments": {"reason": "r"}}},
        {"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": "add", "arguments": {"a": 5, "b": 5}}},
    ]
    with httpx.Client(timeout=10) as c:
        r = c.post(g.url(), json=batch, headers=h)
    assert r.status_code == 200, r.text
    by_id = {i["id"]: i for i in r.json()}
    assert sorted(by_id) == [1, 2, 3, 4]
    assert "result" in by_id[1] and "result" in by_id[4]
    assert by_id[2]["error"]["code"] == -32009 and "`count`" in by_id[2]["error"]["data"]["reason"]
    assert by_id[3]["error"]["code"] == -32009 and "switched off" in by_id[3]["error"]["data"]["reason"]
    # The upstream saw the allowed calls and the notification, never a denied call.
    assert [(i.get("id"), i["method"]) for i in received] == [(1, "tools/call"), (None, "notifications/progress"), (4, "tools/call")]


def test_an_unpaired_answer_listing_tools_is_filtered_as_tools_list(idp, gateway, raw_upstream, tmp_path):
    """Fail closed on pairing: an answer whose id the gateway never saw asked (an upstream
    answering under another id; a legacy session whose posts went through another gateway
    instance) still has the tools the caller may not use taken out when it lists tools."""
    tools = [{"name": n, "inputSchema": {"type": "object"}} for n in ("add", "count", "delete_everything")]

    def handler(conn, head, body):
        data = json.dumps({"jsonrpc": "2.0", "id": 99, "result": {"tools": tools}}).encode()
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nmcp-session-id: s-1\r\ncontent-length: "
                     + str(len(data)).encode() + b"\r\n\r\n" + data)

    up = raw_upstream(handler)
    g = policy_gateway(gateway, idp, up.url(), tmp_path)
    h = {**ACCEPT, "authorization": f"Bearer {idp.token('support-agent')}", "mcp-protocol-version": "2025-06-18"}
    r = httpx.post(g.url(), json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, headers=h, timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["id"] == 99 and [t["name"] for t in r.json()["result"]["tools"]] == ["add"], r.text


def test_plain_http_routes_are_decided_by_method_and_path(idp, gateway, raw_upstream, tmp_path):
    """A plain HTTP API behind the gateway: GETs without a body are decided too (by http.method
    and http.path, and by what detection found in the URL), not only JSON documents."""
    seen = []

    def handler(conn, head, body):
        seen.append(head.split(b"\r\n", 1)[0].decode())
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"ok\":true}")

    up = raw_upstream(handler)
    (tmp_path / "policy.toml").write_text(
        "[[rule]]\nid = \"no-pii-in-urls\"\nwhen = '\"email\" in request.findings.kinds'\naction = \"deny\"\n"
        "[[rule]]\nid = \"reads\"\nwhen = 'http.method == \"GET\" && http.path.startsWith(\"/api/reports\")'\naction = \"allow\"\n"
        "[[rule]]\nid = \"writes\"\nwhen = 'http.method == \"POST\" && \"support\" in identity.groups'\naction = \"allow\"\n")
    extra = (f'[identity]\nissuer = "{idp.issuer}"\naudience = ["{AUDIENCE}"]\n'
             f'[policy]\nfile = "{tmp_path / "policy.toml"}"\n')
    g = gateway([{"path": "/api", "upstream": up.url("/api"), "kind": "http"}], extra=extra, log="info,sluice=debug")
    h = {"authorization": f"Bearer {idp.token('intern-agent')}"}
    with httpx.Client(timeout=10) as c:
        assert c.get(g.url("/api/reports/q3"), headers=h).status_code == 200
        r = c.get(g.url("/api/users"), headers=h)
        assert r.status_code == 403 and r.json()["error"]["code"] == -32009, r.text
        assert "no policy rule allows `intern-agent` to send `GET`" in r.json()["error"]["data"]["reason"]
        # A JSON body goes through the hooks; the decision is the same kind.
        r = c.post(g.url("/api/users"), json={"name": "x"}, headers=h)
        assert r.status_code == 403 and r.json()["error"]["code"] == -32009, r.text
        h2 = {"authorization": f"Bearer {idp.token('support-agent')}"}
        assert c.post(g.url("/api/users"), json={"name": "x"}, headers=h2).status_code == 200
        # An address in the URL (logged by detection's defaults) is what the first rule denies,
        # with or without a body.
        for r in [c.get(g.url("/api/reports/bob%40example.com"), headers=h), c.post(g.url("/api/users?owner=bob@example.com"), json={"name": "x"}, headers=h2)]:
            assert r.status_code == 403 and '"no-pii-in-urls"' in r.json()["error"]["data"]["reason"], r.text
    # Decisions are logged at debug level with the path, unless detection found something in it.
    log = g.proc.text()
    assert "/api/reports/q3" in log and "bob%40example.com" not in log and "bob@example.com" not in log
    assert seen == ["GET /api/reports/q3 HTTP/1.1", "POST /api/users HTTP/1.1"]
    # The record has every exchange with its method and path (an address in it masked,
    # although detection only logged it) and each decision beside it.
    settled(g)
    events = [e for e in spool_events(g.spool) if e.get("route")]
    assert all("http_method" in e and "http_path" in e for e in events), [e for e in events if "http_method" not in e]
    denied = [(e["kind"], e["http_method"], e["http_path"]) for e in events if e["kind"] in ("document", "decision") and e["http_path"] == "/api/users"]
    assert denied[:2] == [("document", "GET", "/api/users"), ("decision", "GET", "/api/users")], denied
    reports = {e["http_path"] for e in events if e["http_path"].startswith("/api/reports/")}
    assert "/api/reports/q3" in reports and len(reports) == 2, reports
    assert "bob" not in json.dumps(events), [p for p in reports if "bob" in p]


def test_a_path_is_decided_in_the_form_the_upstream_reads(idp, gateway, raw_upstream, tmp_path):
    """A policy that allows reads under /api/reports cannot be walked out of with dot segments,
    escaped dots, repeated slashes or Tomcat's `..;`: the gateway decides on the canonical path
    and sends the upstream that path, so both read the same one. Escaped separators are
    refused unless the route allows them, and then passed as sent."""
    seen = []

    def handler(conn, head, body):
        seen.append(head.split(b"\r\n", 1)[0].decode())
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"ok\":true}")

    up = raw_upstream(handler)
    (tmp_path / "policy.toml").write_text("[[rule]]\nid = \"reads\"\nwhen = 'http.method == \"GET\" && http.path.startsWith(\"/api/reports/\")'\naction = \"allow\"\n"
                                         "[[rule]]\nid = \"git\"\nwhen = 'http.path.startsWith(\"/git/projects/\")'\naction = \"allow\"\n")
    extra = (f'[identity]\nissuer = "{idp.issuer}"\naudience = ["{AUDIENCE}"]\n'
             f'[policy]\nfile = "{tmp_path / "policy.toml"}"\n')
    g = gateway([{"path": "/api", "upstream": up.url("/v2"), "kind": "http"},
                 {"path": "/git", "upstream": up.url("/gitlab"), "kind": "http", "name": "git"}], extra=extra)
    reload(g, 'name = "git"\nkind = "http"\n', 'name = "git"\nkind = "http"\nallow_encoded_slashes = true\n', 1)
    token = idp.token("intern-agent")

    def get(target):
        with socket.create_connection(("127.0.0.1", g.port), timeout=10) as s:
            s.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split(b" ")[1]), json.loads(body)

    assert get("/api/reports/q3")[0] == 200
    for walk in ["/api/reports/../users", "/api/reports/%2e%2e/users", "/api/reports/.%2E/users", "/api/reports//../users", "/api/reports/./../users?all=1"]:
        status, body = get(walk)
        assert status == 403 and body["error"]["code"] == -32009, (walk, body)
    assert get("/api/reports/x/../q4")[0] == 200
    # Outside the route's upstream base, the same: /api/../.. stays under /v2.
    assert get("/api/reports/../../../../etc/passwd")[0] == 404, "read as /etc/passwd: no route"
    for bad in ["/api/reports/..;/users", "/api/reports\\..\\users", "/api/reports/%2e%2e%2fusers", "/api/reports/%00", "/api/reports/%zz"]:
        status, body = get(bad)
        assert status == 400 and body["error"]["code"] == -32600, (bad, body)
    assert "allow_encoded_slashes" in get("/api/reports/a%2Fb")[1]["error"]["data"]["reason"]
    # A URL as the target is read as its path (when it names the Host header's host).
    assert get("http://127.0.0.1/api/users")[0] == 403
    for bad in ["http://other.example/api/reports/q3", "*", "ftp://127.0.0.1/api/reports/q3"]:
        assert get(bad)[0] == 400, bad
    # A route that allows escaped slashes passes them on (hex upper-cased), not split on.
    assert get("/git/projects/group%2fproject/../other%2Fproject")[0] == 200
    assert seen == ["GET /v2/reports/q3 HTTP/1.1", "GET /v2/reports/q4 HTTP/1.1", "GET /gitlab/projects/other%2Fproject HTTP/1.1"], seen
    settled(g)
    paths = [e["http_path"] for e in spool_events(g.spool) if e["kind"] == "decision" and e["decision"]["stage"] == "policy"]
    assert [p.split("?")[0] for p in paths].count("/api/users") == 6 and not any(".." in p or "//" in p for p in paths), paths


def test_mask_rules_change_what_a_group_sees(idp, gateway, py_json, tmp_path):
    """A mask rule for interns: personal data in answers is redacted for them, while others get
    detection's default (a keyed fingerprint for e-mail addresses)."""
    (tmp_path / "policy.toml").write_text(
        "default = \"allow\"\n"
        "[[rule]]\nid = \"interns-no-pii\"\nwhen = '\"interns\" in identity.groups'\naction = \"mask\"\n"
        "direction = \"response\"\ncategories = [\"pii\"]\nstrategy = \"redact\"\n")
    extra = (f'[identity]\nissuer = "{idp.issuer}"\naudience = ["{AUDIENCE}"]\n'
             f'[policy]\nfile = "{tmp_path / "policy.toml"}"\n')
    g = gateway([{"path": "/mcp", "upstream": py_json}], extra=extra)

    async def shout(s):
        return await try_call(s, "shout", {"text": "write to ada.lovelace@example.com"})

    intern = asyncio.run(session(g.url(), idp.token("intern-agent"), shout))
    support = asyncio.run(session(g.url(), idp.token("support-agent"), shout))
    assert intern[0] == "ok" and support[0] == "ok", (intern, support)
    assert "ADA.LOVELACE@EXAMPLE.COM" not in intern[1] and "ADA.LOVELACE@EXAMPLE.COM" not in support[1]
    assert "[REDACTED:email]" in intern[1], intern
    assert "[REDACTED:email]" not in support[1] and "WRITE TO" in support[1], support


def test_the_policy_holds_over_the_legacy_http_sse_transport(idp, gateway, py_legacy, tmp_path):
    """Over the legacy transport the answers come on the stream, not on the call's own post:
    the gateway pairs them through the session, so `tools/list` is filtered and calls are
    decided exactly as over Streamable HTTP."""
    from mcp.client.sse import sse_client

    (tmp_path / "policy.toml").write_text(POLICY)
    extra = (f'[identity]\nissuer = "{idp.issuer}"\naudience = ["{AUDIENCE}"]\nagent_type_claim = "agent_type"\n'
             f'[policy]\nfile = "{tmp_path / "policy.toml"}"\n')
    g = gateway([{"path": "/legacy", "upstream": py_legacy}], extra=extra)

    async def run(token):
        async with sse_client(g.url("/legacy/sse"), headers={"authorization": f"Bearer {token}"}) as (read, write):
            async with ClientSession(read, write) as s:
                await s.initialize()
                listed = sorted(t.name for t in (await s.list_tools()).tools)
                return listed, await try_call(s, "add", {"a": 2, "b": 3}), await try_call(s, "count", {"n": 2})

    listed, add, count = asyncio.run(run(idp.token("support-agent")))
    assert listed == ["add", "shout"], listed
    assert add == ("ok", "5") and count[:2] == ("error", -32009), (add, count)
    listed, add, _ = asyncio.run(run(idp.token("intern-agent")))
    assert listed == [] and add[:2] == ("error", -32009), (listed, add)


def test_a_member_named_twice_cannot_split_the_policy_from_the_upstream(idp, gateway, raw_upstream, tmp_path):
    """`{"name": "add", "name": "delete_everything"}`: the gateway's reader took the first name
    (and the policy allowed `add`), the upstream's reader — Python's, JavaScript's — takes the
    last and ran `delete_everything`. Messages that name a member twice are refused, both ways."""
    def handler(conn, head, body):
        dup = b'"content":[],"content":[{"type":"text","text":"hidden"}]' if b"list_twice" in body else b'"content":[{"type":"text","text":"ok"}]'
        out = b'{"jsonrpc":"2.0","id":1,"result":{' + dup + b'}}'
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: " + str(len(out)).encode() + b"\r\n\r\n" + out)

    up = raw_upstream(handler)
    (tmp_path / "policy.toml").write_text("[[rule]]\nid = \"only-add\"\nwhen = 'tool.name == \"add\" || tool.name == \"list_twice\"'\naction = \"allow\"\n"
                                          "[[rule]]\nid = \"not-calls\"\nwhen = 'method != \"tools/call\"'\naction = \"allow\"\n")
    g = gateway([{"path": "/mcp", "upstream": up.url()}], extra=f'[policy]\nfile = "{tmp_path / "policy.toml"}"\n')
    with httpx.Client(timeout=10) as c:
        for body in [b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add","name":"delete_everything","arguments":{}}}',
                     b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"n\\u0061me":"delete_everything","name":"add","arguments":{}}}',
                     b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add","arguments":{"x":"safe","x":"AKIAQYLPMN5HFIQR7XQB"}}}']:
            r = c.post(g.url(), content=body, headers=ACCEPT)
            assert r.status_code == 400 and r.json()["error"]["code"] == -32600, r.text
            assert "names the same member twice" in r.json()["error"]["data"]["reason"]
        assert up.requests == []
        r = c.post(g.url(), content=b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add","arguments":{}}}', headers=ACCEPT)
        assert r.status_code == 200 and r.json()["result"]["content"][0]["text"] == "ok"
        # An answer naming a member twice does not reach the agent.
        r = c.post(g.url(), content=b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"list_twice","arguments":{}}}', headers=ACCEPT)
        assert r.status_code == 502 and r.json()["error"]["code"] == -32001 and "hidden" not in r.text, r.text
    settled(g)
    refused = [e for e in spool_events(g.spool) if e["kind"] == "decision" and e["decision"]["stage"] == "protocol"]
    assert len(refused) == 3 and all(e["status"] == 400 and "AKIA" not in json.dumps(e) for e in refused), refused


def test_a_request_id_used_twice_cannot_mispair_answers(gateway, raw_upstream, tmp_path):
    """Answers are paired with requests by id. Two requests under one id — in a batch, or while
    the first still awaits its answer — would have a `tools/list` answer read as a `tools/call`
    result, and the listing would reach the agent unfiltered. Refused."""
    import threading

    def handler(conn, head, body):
        msg = json.loads(body)
        headers = b""
        if msg["method"] == "initialize":
            result, headers = {"protocolVersion": "2025-06-18", "capabilities": {"tools": {}}, "serverInfo": {"name": "raw", "version": "1"}}, b"mcp-session-id: s-9\r\n"
        elif msg["method"] == "tools/call":
            time.sleep(2)
            result = {"content": [{"type": "text", "text": "4"}]}
        else:
            result = {"tools": [{"name": "add", "inputSchema": {"type": "object"}}, {"name": "drop_tables", "inputSchema": {"type": "object"}}]}
        out = json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": result}).encode()
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n" + headers + b"content-length: " + str(len(out)).encode() + b"\r\n\r\n" + out)

    up = raw_upstream(handler)
    (tmp_path / "policy.toml").write_text("[[rule]]\nid = \"add-only\"\nwhen = 'tool.name == \"add\"'\naction = \"allow\"\n"
                                          "[[rule]]\nid = \"not-calls\"\nwhen = 'method != \"tools/call\"'\naction = \"allow\"\n")
    g = gateway([{"path": "/mcp", "upstream": up.url()}], extra=f'[policy]\nfile = "{tmp_path / "policy.toml"}"\n')
    listing = lambda i: {"jsonrpc": "2.0", "id": i, "method": "tools/list"}  # noqa: E731
    add = lambda i: {"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": {"name": "add", "arguments": {}}}  # noqa: E731
    with httpx.Client(timeout=10) as c:
        r = c.post(g.url(), json=[listing(7), add(7)], headers=ACCEPT)
        assert r.status_code == 400 and "batch index 1" in r.json()["error"]["data"]["reason"], r.text
        r = c.post(g.url(), json=INIT, headers=ACCEPT)
        sid = r.headers["mcp-session-id"]
        h = {**ACCEPT, "mcp-session-id": sid}
        slow = []
        t = threading.Thread(target=lambda: slow.append(httpx.post(g.url(), json=add(9), headers=h, timeout=10)))
        t.start()
        time.sleep(0.7)
        r = c.post(g.url(), json=listing(9), headers=h)
        assert r.status_code == 400 and "still awaits its answer" in r.json()["error"]["data"]["reason"], r.text
        t.join()
        assert slow[0].status_code == 200 and slow[0].json()["result"]["content"][0]["text"] == "4"
        # Once answered, the listing goes through — filtered.
        r = c.post(g.url(), json=listing(10), headers=h)
        assert "result" in r.json() and [t["name"] for t in r.json()["result"]["tools"]] == ["add"], r.text
    assert len([q for q in up.requests if b'"tools/list"' in q]) == 1


def test_requests_from_the_server_are_decided_by_from_server_rules_and_refusals_answer_the_server(py_sse, py_legacy, gateway, tmp_path):
    """`from = "server"` rules decide what an upstream asks of the agent: here the server may
    ask the user (elicitation) but its `summarize` tool may not use the agent's model (sampling). The refused sampling request
    never reaches the official Python SDK client; the gateway answers it to the server in the
    client's place (posted on the session, or to a legacy server's message endpoint), so the tool
    fails at once with the policy's reason instead of hanging until a timeout; the decisions are
    recorded."""
    (tmp_path / "policy.toml").write_text(
        'default = "allow"\n'
        '[[rule]]\nid = "no-sampling"\nfrom = "server"\n'
        "when = 'method == \"sampling/createMessage\" && tool.name == \"summarize\" && upstream in [\"u0\", \"u1\"]'\n"
        'action = "deny"\nreason = "this server may not use the agent\'s model"\n'
        '[[rule]]\nid = "ask-the-user"\nfrom = "server"\nwhen = \'method == "elicitation/create"\'\naction = "allow"\n')
    g = gateway([{"path": "/mcp", "upstream": py_sse}, {"path": "/legacy", "upstream": py_legacy}], extra=f'[policy]\nfile = "{tmp_path / "policy.toml"}"\n')
    for url, flags in [(g.url(), ("--interactive",)), (g.url("/legacy/sse"), ("--legacy", "--interactive"))]:
        started = time.monotonic()
        out = py_client(url, "py", *flags)
        assert time.monotonic() - started < 30, f"{flags}: the refused request was answered, not left to time out"
        assert out["elicit"]["content"][0]["text"] == "accept:Ada", out["elicit"]
        sample = out["sample"]
        assert sample["isError"] is True, (flags, sample)
        text = sample["content"][0]["text"]
        assert "this server may not use the agent's model" in text and "summary=short" not in text, (flags, text)
        assert out["add"]["content"][0]["text"] == "42", "agent calls are decided as before"
    # Decisions are counted by direction, action and rule (what an alert on refusals reads).
    assert g.metric("sluice_policy_decisions_total", direction="response", action="deny", rule="no-sampling") == 2
    assert g.metric("sluice_policy_decisions_total", direction="response", action="allow", rule="ask-the-user") == 2
    assert g.metric("sluice_policy_decisions_total", direction="request", action="allow", rule="default") >= 2
    g.proc.stop()
    # Recorded as the analyzer's `server-overreach` rule reads them: direction response (the
    # server's request travels towards the agent), the server's method, the policy's action —
    # and the tool asking (the call in progress: on the call's own stream, or the legacy stream).
    decided = [(e.get("direction"), e.get("method"), e.get("tool"), e["decision"]["action"], e["decision"]["rule"]) for e in spool_events(g.spool)
               if e["kind"] == "decision" and e["decision"]["stage"] == "policy" and e.get("method") in ("sampling/createMessage", "elicitation/create")]
    assert decided == [("response", "elicitation/create", "ask_name", "allow", "ask-the-user"), ("response", "sampling/createMessage", "summarize", "deny", "no-sampling")] * 2, decided
    assert g.proc.log.read_text().count("answered with an error in the agent's place") == 2


def test_a_servers_request_on_the_get_stream_is_the_call_in_progress_and_its_answer_comes_back(py_get_stream, gateway, tmp_path):
    """A Streamable HTTP server may send its request (here sampling) on the session's standalone
    GET stream rather than on the stream of the call that needs it. The gateway then pairs it
    with the session's one call in progress: a `from = "server"` rule on the tool decides it
    (refused on one route, the refusal answered to the server so the call ends at once), and on
    the other route the official client's model answers it through the gateway and the call
    completes with that answer. The test server sends only once the client's GET stream is open
    (it fails the call otherwise), so this runs the same way every time."""
    (tmp_path / "policy.toml").write_text(
        'default = "allow"\n'
        '[[rule]]\nid = "no-sampling"\nfrom = "server"\n'
        "when = 'method == \"sampling/createMessage\" && tool.name == \"summarize\" && upstream == \"u0\"'\n"
        'action = "deny"\nreason = "this server may not use the agent\'s model"\n')
    g = gateway([{"path": "/mcp", "upstream": py_get_stream}, {"path": "/open", "upstream": py_get_stream}], extra=f'[policy]\nfile = "{tmp_path / "policy.toml"}"\n')
    started = time.monotonic()
    refused = py_client(g.url(), "py", "--interactive")["sample"]
    assert time.monotonic() - started < 30, "the refused request was answered, not left to time out"
    assert refused["isError"] is True and "this server may not use the agent's model" in refused["content"][0]["text"], refused
    answered = py_client(g.url("/open"), "py", "--interactive")["sample"]
    assert answered.get("isError") is not True and answered["content"][0]["text"] == "summary=short", answered
    assert g.metric("sluice_policy_decisions_total", direction="response", action="deny", rule="no-sampling") == 1
    g.proc.stop()
    events = spool_events(g.spool)
    # The server's request is recorded as the tool's on both routes, refused on the first only;
    # the agent's answer to it on the second is recorded as the answer to it (method and tool).
    asked = [(e["route"], e.get("tool")) for e in events if e["kind"] == "request" and e.get("direction") == "response" and e.get("method") == "sampling/createMessage"]
    assert asked == [("r0", "summarize"), ("r1", "summarize")], asked
    decided = [(e["route"], e.get("tool"), e["decision"]["action"], e["decision"]["rule"]) for e in events
               if e["kind"] == "decision" and e["decision"]["stage"] == "policy" and e.get("method") == "sampling/createMessage"]
    assert decided == [("r0", "summarize", "deny", "no-sampling")], decided
    answers = [(e["route"], e.get("tool")) for e in events if e["kind"] == "response" and e.get("direction") == "request" and e.get("method") == "sampling/createMessage"]
    assert answers == [("r1", "summarize")], answers

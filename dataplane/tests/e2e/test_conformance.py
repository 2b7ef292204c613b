"""The MCP conformance suite (`@modelcontextprotocol/conformance server`, the protocol's own
checks of a server) run against a server directly and through the gateway, with detection and
recording on as deployed: every check that passes directly passes through the gateway — tools
returning every content type, logging and progress notifications, sampling and elicitation
(server-to-client requests inside an SSE answer), resources, subscriptions, prompts, completion,
several SSE streams — and the gateway adds the one the server lacks on purpose: refusing a
request that names it by another site's name, from that site's page (DNS rebinding
protection)."""

import json
import re
import subprocess
from pathlib import Path

from conftest import HERE, NODE, spool_events
from test_recording import settled

SUITE = HERE / "node_modules" / "@modelcontextprotocol" / "conformance" / "dist" / "index.js"


def run_suite(url: str, out: Path) -> dict:
    """Every scenario of the suite's active set against `url`: {(scenario, check id): status}."""
    r = subprocess.run([NODE, str(SUITE), "server", "--url", url, "-o", str(out)], capture_output=True, text=True, timeout=600)
    results = {}
    for d in sorted(out.iterdir()):
        scenario = re.match(r"server-(.+)-\d{4}-\d{2}-\d{2}T", d.name)
        assert scenario, d.name
        for check in json.loads((d / "checks.json").read_text()):
            results[(scenario.group(1), check["id"])] = (check["status"], check.get("errorMessage"))
    assert len({s for s, _ in results}) >= 30, (r.stdout[-3000:], r.stderr[-3000:])
    return results


def test_conformance_checks_that_pass_directly_pass_through_the_gateway(conformance_server, gateway, tmp_path):
    direct = run_suite(conformance_server, tmp_path / "direct")
    g = gateway([{"path": "/mcp", "upstream": conformance_server}])
    through = run_suite(g.url(), tmp_path / "through")
    assert set(through) == set(direct), set(through) ^ set(direct)
    # Every check passes through the gateway (so none that passes directly is lost) …
    failed = {k: v for k, v in through.items() if v[0] != "SUCCESS"}
    assert not failed, failed
    assert len(through) >= 40
    # … including one the server fails by itself: it lets any web origin in, the gateway
    # refuses another site's name (421: its `Host` is checked before its `Origin`) and still
    # serves local pages.
    assert direct[("dns-rebinding-protection", "localhost-host-rebinding-rejected")][0] == "FAILURE"
    # The refused page is in the record, without its origin.
    settled(g)
    refused = [e for e in spool_events(g.spool) if e["kind"] == "decision" and e["decision"]["stage"] == "protocol"]
    assert refused and all(e["status"] == 421 and e["error_code"] == -32004 and "evil" not in json.dumps(e) for e in refused), refused

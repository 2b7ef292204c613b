"""An MCP server written with the official Python SDK (FastMCP), for Sluice's end-to-end tests.

usage: python py_server.py PORT [json|sse|legacy|stdio] [get-stream]
  json:   POST responses are single JSON bodies (the gateway's buffered path)
  sse:    POST responses are SSE streams (the gateway's event-by-event path)
  legacy: the legacy HTTP+SSE transport (MCP 2024-11-05): GET /sse, POST /messages/
  stdio:  newline-delimited JSON-RPC on stdin/stdout (PORT is ignored)
  get-stream: `summarize` sends its sampling request on the session's standalone GET stream
          (Streamable HTTP), once the client has opened it, instead of on the call's own stream
"""

import sys

import anyio

from mcp.server.fastmcp import Context, FastMCP
from mcp.server.fastmcp.prompts import base
from mcp.types import Completion, PromptReference, ResourceTemplateReference
from pydantic import BaseModel

port = int(sys.argv[1])
mode = sys.argv[2] if len(sys.argv) > 2 else "json"
get_stream = "get-stream" in sys.argv[3:]
mcp = FastMCP("sluice-e2e-py", host="127.0.0.1", port=port, json_response=(mode == "json"))

NOTES = {"readme": "Sluice e2e notes", "todo": "1. audit\n2. ship"}


@mcp.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@mcp.tool()
def shout(text: str) -> str:
    """Upper-case a text."""
    return text.upper()


@mcp.tool()
def fail(reason: str) -> str:
    """Always fails with the given reason."""
    raise ValueError(reason)


@mcp.tool()
async def count(n: int, ctx: Context) -> str:
    """Count to n, reporting progress."""
    for i in range(1, n + 1):
        await ctx.report_progress(i, n, f"step {i}")
    return f"counted to {n}"


class Person(BaseModel):
    name: str


@mcp.tool()
async def ask_name(ctx: Context) -> str:
    """Ask the user for a name (elicitation)."""
    res = await ctx.elicit("What is your name?", Person)
    return f"{res.action}:{getattr(res, 'data', None) and res.data.name}"


@mcp.tool()
async def summarize(text: str, ctx: Context) -> str:
    """Ask the client's model to summarize (sampling)."""
    # On the call's own stream unless `get-stream`: without `related_request_id` the SDK sends
    # the request on the standalone GET stream, and drops it if the client has not opened that
    # stream yet (a call made right after `initialize` would wait for its answer forever), so
    # that mode first waits for the stream (`get_stream_opened`). The docstring above is
    # the tool's description, which pins and tests hold: change it and they see a rug pull.
    from mcp.types import SamplingMessage, TextContent

    related = ctx.request_id
    if get_stream:
        await get_stream_opened(ctx)
        related = None
    r = await ctx.session.create_message(
        messages=[SamplingMessage(role="user", content=TextContent(type="text", text=text))], max_tokens=10,
        related_request_id=related,
    )
    return f"summary={r.content.text}"


async def get_stream_opened(ctx: Context) -> None:
    """Wait until the client's standalone GET stream is open on this session, so that a server
    request sent without `related_request_id` travels on it (the SDK drops it otherwise). Reads
    the SDK's transport state (1.x: `_server_instances`, `_request_streams`): a test fixture's
    licence; it fails loudly if those names change."""
    from mcp.server.streamable_http import GET_STREAM_KEY

    sid = ctx.request_context.request.headers.get("mcp-session-id")
    transport = mcp.session_manager._server_instances[sid]
    with anyio.fail_after(10):
        while GET_STREAM_KEY not in transport._request_streams:
            await anyio.sleep(0.01)


@mcp.resource("notes://{name}")
def note(name: str) -> str:
    """A note by name."""
    return NOTES.get(name, "")


@mcp.resource("notes://index")
def index() -> str:
    """The list of notes."""
    return ",".join(sorted(NOTES))


@mcp.prompt()
def review(code: str) -> list[base.Message]:
    """Review some code."""
    return [base.UserMessage(f"Please review:\n{code}")]


@mcp.completion()
async def complete(ref: PromptReference | ResourceTemplateReference, argument, context) -> Completion | None:
    if argument.name == "name":
        return Completion(values=[n for n in sorted(NOTES) if n.startswith(argument.value)])
    return None


if __name__ == "__main__":
    mcp.run(transport={"legacy": "sse", "stdio": "stdio"}.get(mode, "streamable-http"))

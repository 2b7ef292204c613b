"""Drives one scripted MCP session with the official Python SDK client and prints what it saw
as JSON, so that a run straight against a server and one through Sluice can be compared.

usage: python py_client.py URL everything|py [--interactive] [--legacy|--stdio]
  --legacy: the legacy HTTP+SSE transport (URL is the server's /sse stream)
  --stdio:  the stdio transport (URL is the server's command line as a JSON array)
"""

import contextlib

import asyncio
import json
import sys

from mcp import ClientSession, StdioServerParameters, types
from mcp.client.sse import sse_client
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamablehttp_client


@contextlib.asynccontextmanager
async def connect(url: str):
    """(read, write, session id getter) for either transport; legacy sessions have no id header."""
    if "--stdio" in sys.argv:
        cmd = json.loads(url)
        async with stdio_client(StdioServerParameters(command=cmd[0], args=cmd[1:])) as (read, write):
            yield read, write, lambda: None
    elif "--legacy" in sys.argv:
        async with sse_client(url) as (read, write):
            yield read, write, lambda: None
    else:
        async with streamablehttp_client(url) as (read, write, get_session_id):
            yield read, write, get_session_id


def dump(x):
    return x.model_dump(mode="json", exclude_none=True, by_alias=True)


async def sampling(ctx, params: types.CreateMessageRequestParams):
    return types.CreateMessageResult(
        role="assistant", model="e2e-model", content=types.TextContent(type="text", text="short")
    )


async def elicitation(ctx, params):
    return types.ElicitResult(
        action="accept",
        content={"name": "Ada", "check": True, "email": "ada@example.com", "integer": 7, "number": 3.5,
                 "untitledSingleSelectEnum": "option1"},
    )


async def main(url: str, server: str) -> dict:
    out: dict = {}
    logs: list = []

    async def on_log(p: types.LoggingMessageNotificationParams):
        logs.append(p.level)

    async with connect(url) as (read, write, get_session_id):
        async with ClientSession(read, write, sampling_callback=sampling, elicitation_callback=elicitation,
                                 logging_callback=on_log) as s:
            init = await s.initialize()
            out["server"] = init.serverInfo.name
            out["protocol"] = init.protocolVersion
            out["session"] = get_session_id() is not None
            out["tools"] = sorted(t.name for t in (await s.list_tools()).tools)
            out["ping"] = dump(await s.send_ping())
            progress: list = []

            async def on_progress(p, total, message):
                progress.append([p, total])

            if server == "py":
                out["add"] = dump(await s.call_tool("add", {"a": 2, "b": 40}))
                out["shout"] = dump(await s.call_tool("shout", {"text": "quiet \u00fc"}))
                out["fail"] = dump(await s.call_tool("fail", {"reason": "on purpose"}))
                out["resources"] = dump(await s.list_resources())
                out["templates"] = dump(await s.list_resource_templates())
                out["read"] = dump(await s.read_resource("notes://todo"))
                out["prompts"] = dump(await s.list_prompts())
                out["prompt"] = dump(await s.get_prompt("review", {"code": "x = 1"}))
                out["complete"] = dump(await s.complete(
                    types.ResourceTemplateReference(type="ref/resource", uri="notes://{name}"), {"name": "name", "value": "re"}))
                if "--interactive" in sys.argv:
                    # Needs a server that answers POSTs with SSE: progress, elicitation and
                    # sampling then travel on the call's own stream, in order.
                    out["count"] = dump(await s.call_tool("count", {"n": 3}, progress_callback=on_progress))
                    out["elicit"] = dump(await s.call_tool("ask_name", {}))
                    out["sample"] = dump(await s.call_tool("summarize", {"text": "long text"}))
            else:
                out["echo"] = dump(await s.call_tool("echo", {"message": "py \u2603"}))
                out["long"] = dump(await s.call_tool("trigger-long-running-operation", {"duration": 1, "steps": 3},
                                                     progress_callback=on_progress))
                out["sampling"] = dump(await s.call_tool("trigger-sampling-request", {"prompt": "hi", "maxTokens": 5}))
                out["elicitation"] = dump(await s.call_tool("trigger-elicitation-request", {}))
                res = await s.list_resources()
                out["read"] = dump(await s.read_resource(res.resources[0].uri))
                out["prompt"] = dump(await s.get_prompt("simple-prompt"))
                out["setLevel"] = dump(await s.set_logging_level("info"))
            out["progress"] = progress
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2])), sort_keys=True))

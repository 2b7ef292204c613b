"""An MCP client on protocol revision 2026-07-28 (the official Python SDK 2.x), for Sluice's
end-to-end tests; prints what it got as one JSON object.

usage: python py2026_client.py URL SCENARIO [ARG…] [--key API_KEY]
  URL: the MCP endpoint, or `stdio:COMMAND ARG…` (space-separated) to launch a local server
  session TO     list the tools, call add, lookup, and send (to=TO, mirrored in Mcp-Param-To)
  listen         list the tools, open a `subscriptions/listen` stream for tool-list changes,
                 call rug_pull (which changes add's description and announces it on the stream),
                 wait for the event, list the tools again and call add
  deploy ASK     call deploy, whose first answer asks for ASK (multi-round-trip request): the
                 client answers sampling with a fixed text and URL elicitation with "accept"
"""

import asyncio
import json
import sys

import anyio

import httpx2
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CreateMessageResult, ElicitResult, TextContent


async def sampling(context, params):
    return CreateMessageResult(role="assistant", content=TextContent(type="text", text="plan looks fine"), model="test-model")


async def elicitation(context, params):
    return ElicitResult(action="accept")


def text(result):
    return {"text": "".join(c.text for c in result.content if getattr(c, "text", None)), "is_error": bool(result.is_error)}


async def main(url, scenario, args, key):
    headers = {"x-api-key": key} if key else {}
    async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
        if url.startswith("stdio:"):
            command, *rest = url.removeprefix("stdio:").split(" ")
            transport = StdioServerParameters(command=command, args=rest)
        else:
            transport = streamable_http_client(url, http_client=http)
        async with Client(transport, sampling_callback=sampling, elicitation_callback=elicitation) as client:
            out = {}
            try:
                if scenario == "session":
                    out["tools"] = sorted(t.name for t in (await client.list_tools()).tools)
                    out["add"] = (await client.call_tool("add", {"a": 2, "b": 3})).structured_content
                    out["lookup"] = text(await client.call_tool("lookup", {"customer": "c-7"}))
                    out["send"] = text(await client.call_tool("send", {"to": args[0], "body": "hello"}))
                elif scenario == "listen":
                    out["before"] = {t.name: t.description for t in (await client.list_tools()).tools}
                    async with client.listen(tools_list_changed=True) as sub:
                        out["honored"] = bool(sub.honored.tools_list_changed)
                        out["rug_pull"] = text(await client.call_tool("rug_pull", {}))
                        with anyio.fail_after(10):
                            out["event"] = type(await sub.__anext__()).__name__
                    out["after"] = {t.name: t.description for t in (await client.list_tools()).tools}
                    try:
                        out["add"] = text(await client.call_tool("add", {"a": 2, "b": 3}))
                    except Exception as e:  # refused by the gateway: a JSON-RPC error
                        out["add"] = {"error": str(e)}
                elif scenario == "deploy":
                    out["deploy"] = text(await client.call_tool("deploy", {"target": "prod", "ask": args[0]}))
            except Exception as e:  # the gateway's refusals reach the SDK as errors
                out["error"] = str(e)
            print(json.dumps(out))


if __name__ == "__main__":
    argv = sys.argv[1:]
    key = None
    if "--key" in argv:
        i = argv.index("--key")
        key = argv[i + 1]
        del argv[i : i + 2]
    asyncio.run(main(argv[0], argv[1], argv[2:], key))

"""An MCP server with the features the MCP conformance suite (`@modelcontextprotocol/conformance
server`) tests, written with the official Python SDK from the suite's published server
requirements: tools returning every content type, logging, progress, errors, sampling and
elicitation; static, binary, templated and subscribable resources; prompts with arguments,
embedded resources and images; log levels; completion. Streamable HTTP, answers as SSE.

usage: python conformance_server.py PORT
"""

import asyncio
import base64
import io
import json
import struct
import sys
import wave
import zlib

from mcp.server.fastmcp import Context, FastMCP
from mcp.server.fastmcp.prompts import base
from mcp.server.transport_security import TransportSecuritySettings
from mcp.types import (
    AudioContent,
    Completion,
    EmbeddedResource,
    ImageContent,
    SamplingMessage,
    TextContent,
    TextResourceContents,
)

port = int(sys.argv[1])
# Host checks are the gateway's business in these tests (it forwards the agent's Host).
mcp = FastMCP("mcp-conformance-test-server", host="127.0.0.1", port=port, json_response=False,
              transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False))


def png_1x1_red() -> str:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = b"\x00\xff\x00\x00"  # filter byte, one RGB pixel
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    return base64.b64encode(png).decode()


def wav_short_tone() -> str:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"".join(struct.pack("<h", 8000 if (i // 10) % 2 else -8000) for i in range(800)))
    return base64.b64encode(buf.getvalue()).decode()


PNG = png_1x1_red()
WAV = wav_short_tone()


@mcp.tool(description="Returns simple text content")
def test_simple_text() -> str:
    return "This is a simple text response for testing."


@mcp.tool(description="Returns image content")
def test_image_content() -> list:
    return [ImageContent(type="image", data=PNG, mimeType="image/png")]


@mcp.tool(description="Returns audio content")
def test_audio_content() -> list:
    return [AudioContent(type="audio", data=WAV, mimeType="audio/wav")]


@mcp.tool(description="Returns an embedded resource")
def test_embedded_resource() -> list:
    return [EmbeddedResource(type="resource", resource=TextResourceContents(
        uri="test://embedded-resource", mimeType="text/plain", text="This is an embedded resource content."))]


@mcp.tool(description="Returns text, an image and a resource")
def test_multiple_content_types() -> list:
    return [
        TextContent(type="text", text="Multiple content types test:"),
        ImageContent(type="image", data=PNG, mimeType="image/png"),
        EmbeddedResource(type="resource", resource=TextResourceContents(
            uri="test://mixed-content-resource", mimeType="application/json", text=json.dumps({"test": "data", "value": 123}, separators=(",", ":")))),
    ]


@mcp.tool(description="Sends log messages while it runs")
async def test_tool_with_logging(ctx: Context) -> str:
    await ctx.info("Tool execution started")
    await asyncio.sleep(0.05)
    await ctx.info("Tool processing data")
    await asyncio.sleep(0.05)
    await ctx.info("Tool execution completed")
    return "Tool with logging executed successfully"


# Messages for the client during a call name the call (`related_request_id`), so that they go on
# the call's own SSE stream: without it the SDK sends them on the client's standalone GET
# stream, or drops them if that is not open yet (`Context.report_progress` does not name it).


@mcp.tool(description="Reports progress while it runs")
async def test_tool_with_progress(ctx: Context) -> str:
    meta = ctx.request_context.meta
    token = meta.progressToken if meta else None
    for done in (0, 50, 100):
        if token is not None:
            await ctx.session.send_progress_notification(progress_token=token, progress=done, total=100, related_request_id=ctx.request_id)
        if done < 100:
            await asyncio.sleep(0.05)
    return "Tool with progress executed successfully"


@mcp.tool(description="Always fails")
def test_error_handling() -> str:
    raise RuntimeError("This tool intentionally returns an error for testing")


@mcp.tool(description="Asks the client's model for a completion")
async def test_sampling(prompt: str, ctx: Context) -> str:
    r = await ctx.session.create_message(messages=[SamplingMessage(role="user", content=TextContent(type="text", text=prompt))], max_tokens=100,
                                         related_request_id=ctx.request_id)
    text = r.content.text if isinstance(r.content, TextContent) else str(r.content)
    return f"LLM response: {text}"


@mcp.tool(description="Asks the user for input")
async def test_elicitation(message: str, ctx: Context) -> str:
    schema = {"type": "object", "properties": {"response": {"type": "string", "description": "User's response"}}, "required": ["response"]}
    r = await ctx.session.elicit(message=message, requestedSchema=schema, related_request_id=ctx.request_id)
    return f"User response: action={r.action}, content={json.dumps(r.content)}"


async def elicited(ctx: Context, schema: dict) -> str:
    r = await ctx.session.elicit(message="Please review and update the form fields", requestedSchema=schema, related_request_id=ctx.request_id)
    return f"Elicitation completed: action={r.action}, content={json.dumps(r.content)}"


@mcp.tool(description="Elicitation with a default value for every primitive type (SEP-1034)")
async def test_elicitation_sep1034_defaults(ctx: Context) -> str:
    return await elicited(ctx, {"type": "object", "properties": {
        "name": {"type": "string", "default": "John Doe"},
        "age": {"type": "integer", "default": 30},
        "score": {"type": "number", "default": 95.5},
        "status": {"type": "string", "enum": ["active", "inactive", "pending"], "default": "active"},
        "verified": {"type": "boolean", "default": True},
    }})


@mcp.tool(description="Elicitation with every enum shape (SEP-1330)")
async def test_elicitation_sep1330_enums(ctx: Context) -> str:
    titled = [{"const": f"value{i}", "title": t} for i, t in enumerate(["First Option", "Second Option", "Third Option"], 1)]
    return await elicited(ctx, {"type": "object", "properties": {
        "untitledSingle": {"type": "string", "enum": ["option1", "option2", "option3"]},
        "titledSingle": {"type": "string", "oneOf": titled},
        "legacyEnum": {"type": "string", "enum": ["opt1", "opt2", "opt3"], "enumNames": ["Option One", "Option Two", "Option Three"]},
        "untitledMulti": {"type": "array", "items": {"type": "string", "enum": ["option1", "option2", "option3"]}},
        "titledMulti": {"type": "array", "items": {"anyOf": titled}},
    }})


@mcp.resource("test://static-text", name="Static Text Resource", description="A static text resource for testing", mime_type="text/plain")
def static_text() -> str:
    return "This is the content of the static text resource."


@mcp.resource("test://static-binary", name="Static Binary Resource", description="A static binary resource (image) for testing", mime_type="image/png")
def static_binary() -> bytes:
    return base64.b64decode(PNG)


@mcp.resource("test://template/{id}/data", name="Resource Template", description="A resource template with parameter substitution", mime_type="application/json")
def template(id: str) -> str:
    return json.dumps({"id": id, "templateTest": True, "data": f"Data for ID: {id}"}, separators=(",", ":"))


@mcp.resource("test://watched-resource", name="Watched Resource", description="A resource that can be subscribed to", mime_type="text/plain")
def watched() -> str:
    return "Watched resource content"


SUBSCRIBED: set = set()


@mcp._mcp_server.subscribe_resource()
async def subscribe(uri) -> None:
    SUBSCRIBED.add(str(uri))


@mcp._mcp_server.unsubscribe_resource()
async def unsubscribe(uri) -> None:
    SUBSCRIBED.discard(str(uri))


@mcp._mcp_server.set_logging_level()
async def set_level(level) -> None:
    return None


@mcp.prompt(name="test_simple_prompt", description="A simple prompt without arguments")
def simple_prompt() -> list[base.Message]:
    return [base.UserMessage("This is a simple prompt for testing.")]


@mcp.prompt(name="test_prompt_with_arguments", description="A prompt with required arguments")
def prompt_with_arguments(arg1: str, arg2: str) -> list[base.Message]:
    return [base.UserMessage(f"Prompt with arguments: arg1='{arg1}', arg2='{arg2}'")]


@mcp.prompt(name="test_prompt_with_embedded_resource", description="A prompt with an embedded resource")
def prompt_with_embedded_resource(resourceUri: str) -> list[base.Message]:
    return [
        base.UserMessage(EmbeddedResource(type="resource", resource=TextResourceContents(uri=resourceUri, mimeType="text/plain", text="Embedded resource content for testing."))),
        base.UserMessage("Please process the embedded resource above."),
    ]


@mcp.prompt(name="test_prompt_with_image", description="A prompt with an image")
def prompt_with_image() -> list[base.Message]:
    return [base.UserMessage(ImageContent(type="image", data=PNG, mimeType="image/png")), base.UserMessage("Please analyze the image above.")]


@mcp.completion()
async def complete(ref, argument, context) -> Completion | None:
    words = ["paris", "park", "party"]
    return Completion(values=[w for w in words if w.startswith(argument.value or "")], hasMore=False)


if __name__ == "__main__":
    mcp.run(transport="streamable-http")

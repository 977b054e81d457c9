"""Answers written out as they go: the images answer with `b64_json` read from storage a chunk
at a time (a 4K image is never whole in memory, let alone n of them), and the SSE stream of
`stream: true`: the partial images the job relays, then the completed events once the images
are stored and billed, or an `error` event after the refund."""

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any

from app.generations import service as generations
from app.generations import waiting
from app.generations.endpoints import failure
from app.models import Generation, GenerationImage, GenerationStatus
from app.openai_compat.errors import error_type
from app.runtime import Runtime

CHUNK = 3 * 256 * 1024  # a multiple of 3: the base64 of each chunk stands on its own


def b64_length(size: int) -> int:
    return 4 * ((size + 2) // 3)


def created_of(row: Generation) -> int:
    return int(row.created_at.timestamp())


def described(row: Generation, image: GenerationImage | None = None) -> dict[str, Any]:
    """background, output_format, quality and size, as far as they are known."""
    options = row.options or {}
    size = f"{image.width}x{image.height}" if image is not None else row.size
    return {"background": options.get("background", "auto"), "output_format": row.output_format,
            "quality": row.render_quality, "size": size}


def usage_of(row: Generation) -> dict[str, Any] | None:
    return row.provider_usage or None


def dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


async def b64_of(rt: Runtime, image: GenerationImage) -> AsyncIterator[bytes]:
    async for chunk in rt.storage.read_chunks(image.storage_key, CHUNK):
        yield base64.b64encode(chunk)


def images_answer(rt: Runtime, row: Generation, images: list[GenerationImage],
                  response_format: str) -> tuple[AsyncIterator[bytes], int]:
    """The 200 body of OpenAI's images answer, as chunks, and its exact length."""
    ordered = sorted(images, key=lambda i: i.index)
    tail: dict[str, Any] = described(row, ordered[0] if ordered else None)
    if tail["background"] == "auto":
        del tail["background"]
    if (usage := usage_of(row)) is not None:
        tail["usage"] = usage
    head = b'{"created":%d,"data":[' % created_of(row)
    end = b"]," + dumps(tail)[1:]
    if response_format == "url":
        items = [dumps({"url": rt.storage.url(image.storage_key)}) for image in ordered]
        body = head + b",".join(items) + end

        async def whole() -> AsyncIterator[bytes]:
            yield body
        return whole(), len(body)

    opening, closing = b'{"b64_json":"', b'"}'
    length = len(head) + len(end) + max(len(ordered) - 1, 0)
    length += sum(len(opening) + b64_length(i.byte_size) + len(closing) for i in ordered)

    async def chunks() -> AsyncIterator[bytes]:
        yield head
        for number, image in enumerate(ordered):
            yield (b"," if number else b"") + opening
            async for piece in b64_of(rt, image):
                yield piece
            yield closing
        yield end
    return chunks(), length


def sse(data: dict[str, Any], event: str | None = None) -> bytes:
    named = f"event: {event}\n".encode() if event else b""
    return named + b"data: " + dumps(data) + b"\n\n"


def error_event(message: str, code: str, status: int, **extra: Any) -> bytes:
    return sse({"type": "error", "error": {"message": message, "type": error_type(status),
                                           "code": code, "param": None, **extra}}, "error")


async def events(rt: Runtime, generation_id: str, user_id: str, *, kind: str,
                 wait_s: float) -> AsyncIterator[bytes]:
    """The SSE events of one generation: partial images as they come, then one completed event
    per delivered image, or an error event (after the refund, or when the wait ends)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    cursor = "0"
    async with rt.reader() as session:
        row, _ = await generations.get_for_owner(session, generation_id, user_id)
    with rt.queue.watch(generation_id) as watch:
        while True:
            status = await rt.statuses.status(generation_id)
            partials, cursor = await rt.queue.partials_after(generation_id, cursor)
            for partial in partials:
                yield sse({"type": f"{kind}.partial_image", "b64_json": partial["b64_json"],
                           "partial_image_index": partial["partial_image_index"],
                           "created_at": created_of(row), **described(row)},
                          f"{kind}.partial_image")
            if status is not None and status.is_final:
                break
            remaining = deadline - loop.time()
            if remaining <= 0:
                yield error_event("the generation is still running; it goes on and is billed as "
                                  "usual: poll poll_url for the result", "generationPending",
                                  504, generation_id=generation_id,
                                  poll_url=f"{rt.settings.base_url}/api/v1/generations/"
                                           f"{generation_id}")
                return
            await watch.wait(min(remaining, waiting.RECHECK_S))
    async with rt.reader() as session:
        row, images = await generations.get_for_owner(session, generation_id, user_id)
    if row.status != GenerationStatus.SUCCEEDED:
        error = failure(row)
        yield error_event(error.message, error.code, error.status, generation_id=generation_id)
        return
    ordered = sorted(images, key=lambda i: i.index)
    for number, image in enumerate(ordered):
        usage = usage_of(row) if number == len(ordered) - 1 else None
        tail = {"created_at": created_of(row), **described(row, image),
                "usage": full_usage(usage)}
        yield (f"event: {kind}.completed\n".encode()
               + b'data: {"type":"' + kind.encode() + b'.completed","b64_json":"')
        async for piece in b64_of(rt, image):
            yield piece
        yield b'",' + dumps(tail)[1:] + b"\n\n"


def full_usage(usage: dict[str, Any] | None) -> dict[str, Any]:
    """The usage object the SDK's completed events carry (zeros where the provider is silent;
    with several images the provider's total is on the last one)."""
    usage = dict(usage or {})
    details = usage.get("input_tokens_details") or {}
    return {"input_tokens": usage.get("input_tokens", 0),
            "output_tokens": usage.get("output_tokens", 0),
            "total_tokens": usage.get("total_tokens", 0),
            "input_tokens_details": {"image_tokens": details.get("image_tokens", 0),
                                     "text_tokens": details.get("text_tokens", 0)}}

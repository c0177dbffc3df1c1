"""The OpenAI-compatible routes: `/v1/models`, `/v1/completions`, `/v1/chat/completions`, each
non-streaming or streaming (server-sent events in OpenAI's chunk format, `data: [DONE]` last).

Follows the OpenAI API reference for the fields a client relies on; a few extensions: every
choice carries `token_ids` (the generated ids; text is their `tokens.decode`), and `prompt`
may be a list of token ids. One prompt per request (`n` = 1)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any, Union

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from . import tokens
from .worker import EngineWorker, Job

# The completions API's documented default; chat gets the same, since a random-weight model never
# emits an end-of-sequence token and would otherwise run to the context limit.
DEFAULT_MAX_TOKENS = 16


class _Req(BaseModel):
    model_config = ConfigDict(extra="allow")  # clients send fields we ignore (user, top_p, ...)
    model: str
    # null is accepted wherever a field has a default (clients send it for "not set")
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)  # OpenAI's range; null: its default, 1
    stream: bool | None = False
    stream_options: dict | None = None
    n: int | None = Field(None, ge=1, le=1)
    seed: int | None = None


class CompletionRequest(_Req):
    prompt: Union[str, list[int], list[str], list[list[int]]]


class ChatRequest(_Req):
    messages: list[dict[str, Any]] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str = "invalid_request_error", param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param


def _error_body(message: str, kind: str, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


def create_app(worker: EngineWorker) -> FastAPI:
    app = FastAPI(title="flexpipe serve", description="OpenAI-compatible endpoint over flexpipe_kernel pipelines")
    pipe = worker.pipeline
    created = int(time.time())

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, e: ApiError):
        return JSONResponse(_error_body(e.message, e.code, e.param), status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def _bad_body(_: Request, e: RequestValidationError):  # OpenAI answers 400, not FastAPI's 422
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ())[1:])
        return JSONResponse(_error_body(f"{where}: {first.get('msg', 'invalid request')}", "invalid_request_error",
                                        where or None), status_code=400)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": pipe.name, "object": "model", "created": created,
                                            "owned_by": "flexpipe"}]}

    @app.get("/health")
    async def health():
        if worker.failed:
            return JSONResponse({"status": "failed", "reason": worker.failed}, status_code=503)
        return {"status": "ok", "served": worker.served, "devices": pipe.devices}

    def _job(body: _Req, prompt: list[int], max_tokens: int | None) -> Job:
        if body.model != pipe.name:
            raise ApiError(404, f"model {body.model!r} does not exist; this server serves {pipe.name!r}",
                           "model_not_found", "model")
        if not prompt:
            raise ApiError(400, "the prompt is empty", param="prompt")
        bad = [t for t in prompt if not 0 <= t < pipe.args.vocab_size]
        if bad:
            raise ApiError(400, f"token id {bad[0]} is outside the vocabulary (0..{pipe.args.vocab_size - 1})", param="prompt")
        n = max_tokens or DEFAULT_MAX_TOKENS
        total = len(prompt) + n
        limit = worker.max_request_tokens  # a longer request could never be scheduled
        if total > limit:
            raise ApiError(400, f"prompt ({len(prompt)} tokens) + max_tokens ({n}) = {total} exceeds this server's "
                           f"limit of {limit} tokens", param="max_tokens")
        temp = 1.0 if body.temperature is None else body.temperature
        job = Job(prompt, n, temp, body.seed, asyncio.get_running_loop())
        try:
            worker.submit(job)
        except RuntimeError as e:
            raise ApiError(503, str(e), "server_error") from None
        return job

    async def _collect(job: Job) -> tuple[list[int], str]:
        out: list[int] = []
        while True:
            try:
                kind, value = await job.queue.get()
            except asyncio.CancelledError:
                worker.cancel(job)
                raise
            if kind == "token":
                out.append(value)
            elif kind == "done":
                return out, value
            else:
                raise ApiError(500, value, "server_error")

    def _usage(job: Job, n_out: int) -> dict:
        return {"prompt_tokens": len(job.prompt), "completion_tokens": n_out, "total_tokens": len(job.prompt) + n_out}

    async def _sse(job: Job, chunk, final, usage_chunk, include_usage: bool, first: dict | None = None):
        ended = False
        try:
            if first is not None:
                yield f"data: {json.dumps(first)}\n\n"
            async for e in _events(job, chunk, final, usage_chunk, include_usage):
                yield e
            ended = True
        finally:
            if not ended:  # the client closed the stream: stop generating for it
                worker.cancel(job)

    async def _events(job: Job, chunk, final, usage_chunk, include_usage: bool):
        n = 0
        while True:
            kind, value = await job.queue.get()
            if kind == "token":
                n += 1
                yield f"data: {json.dumps(chunk(value))}\n\n"
            elif kind == "done":
                yield f"data: {json.dumps(final(value))}\n\n"
                if include_usage:
                    yield f"data: {json.dumps(usage_chunk(_usage(job, n)))}\n\n"
                break
            else:
                yield f"data: {json.dumps(_error_body(value, 'server_error'))}\n\n"
                break
        yield "data: [DONE]\n\n"

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest):
        p = body.prompt
        if isinstance(p, list) and p and not isinstance(p[0], int):
            if len(p) != 1:
                raise ApiError(400, "one prompt per request (a list of prompts is not supported)", param="prompt")
            p = p[0]
        prompt = tokens.encode(p) if isinstance(p, str) else list(p)
        job = _job(body, prompt, body.max_tokens)
        cid, ts = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        base = {"id": cid, "object": "text_completion", "created": ts, "model": pipe.name}
        if body.stream:
            def chunk(tok):
                return {**base, "choices": [{"index": 0, "text": tokens.piece(tok), "logprobs": None,
                                             "finish_reason": None, "token_ids": [tok]}]}

            def final(reason):
                return {**base, "choices": [{"index": 0, "text": "", "logprobs": None, "finish_reason": reason}]}

            include = bool((body.stream_options or {}).get("include_usage"))
            return StreamingResponse(_sse(job, chunk, final, lambda u: {**base, "choices": [], "usage": u}, include),
                                     media_type="text/event-stream")
        out, reason = await _collect(job)
        return {**base, "choices": [{"index": 0, "text": tokens.decode(out), "logprobs": None,
                                     "finish_reason": reason, "token_ids": out}], "usage": _usage(job, len(out))}

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest):
        prompt = tokens.encode(tokens.chat_prompt(body.messages))
        job = _job(body, prompt, body.max_completion_tokens or body.max_tokens)
        cid, ts = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if body.stream:
            base = {"id": cid, "object": "chat.completion.chunk", "created": ts, "model": pipe.name}

            def chunk(tok):
                return {**base, "choices": [{"index": 0, "delta": {"content": tokens.piece(tok)}, "finish_reason": None,
                                             "token_ids": [tok]}]}

            def final(reason):
                return {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": reason}]}

            include = bool((body.stream_options or {}).get("include_usage"))
            first = {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                          "finish_reason": None}]}
            return StreamingResponse(_sse(job, chunk, final, lambda u: {**base, "choices": [], "usage": u}, include,
                                          first), media_type="text/event-stream")
        out, reason = await _collect(job)
        return {"id": cid, "object": "chat.completion", "created": ts, "model": pipe.name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": tokens.decode(out)},
                             "finish_reason": reason, "token_ids": out}],
                "usage": _usage(job, len(out))}

    return app

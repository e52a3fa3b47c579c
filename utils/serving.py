"""A small OpenAI-style completion server with a request queue and dynamic batching (notebook 09).

What a serving engine does, in one file:

* **an HTTP API** (FastAPI): ``POST /v1/completions`` with the body OpenAI's completions API takes
  (``prompt``, ``max_tokens``, ``temperature``, ``stream``), answering JSON or, with
  ``"stream": true``, server-sent events (``data: {...}`` per token, then ``data: [DONE]``);
  ``GET /health``, ``GET /v1/models``, ``GET /stats``. A body that is not valid gets a 400 whose
  message names the field; the server goes on serving.
* **a request queue with a bound**: at most ``max_pending`` requests are queued or running; one
  more gets a 429 at once instead of waiting forever. A request holds its slot until it finishes
  or its client goes away (a stream that is closed early frees its slot and its batch row).
* **dynamic batching**: one worker thread owns the model. It takes the oldest request, waits up to
  ``max_wait_ms`` for more, and decodes up to ``max_batch_size`` of them together: one forward
  pass per step for the whole batch, left-padded prompts, one KV cache. A decode step reads every
  weight once whatever the batch, so a batch of 16 costs far less than 16 single steps.
* **continuous batching** (Yu et al., 2022, *Orca*; vLLM): before every step, requests that arrived
  while the batch was running are prefilled and *join* it, as long as there is room: their cache
  rows are left-padded to the running length (the padding masked out), so nobody waits for a whole
  batch to finish. Finished requests leave the batch at once. ``continuous=False`` is static
  batching (a batch runs to its end); ``max_batch_size=1`` is the one-at-a-time server.

The server runs in a thread of the process that owns the model (a notebook's kernel), on a free
port of 127.0.0.1 only: :class:`LocalServer` starts it, waits until it answers, and stops it,
each with a timeout. Nothing here is an exercise's answer.
"""
from __future__ import annotations

import asyncio
import json
import queue
import socket
import statistics
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

MODEL_NAME = "smollm2-135m-instruct"


# =========================================================================== the engine


@dataclass(eq=False)
class Request:
    prompt: str
    max_tokens: int
    temperature: float = 0.0
    id: str = field(default_factory=lambda: f"cmpl-{uuid.uuid4().hex[:12]}")
    created: float = field(default_factory=time.time)
    events: "queue.Queue" = field(default_factory=queue.Queue)   # text pieces, then a ("done", reason) tuple
    cancelled: threading.Event = field(default_factory=threading.Event)
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def cancel(self) -> None:
        self.cancelled.set()


class BatchingEngine:
    """Owns the model; decodes queued requests in batches of up to ``max_batch_size`` in a worker thread."""

    def __init__(self, model, tokenizer, max_batch_size: int = 8, max_wait_ms: float = 20.0,
                 max_pending: int = 64, max_tokens_limit: int = 256, max_prompt_tokens: int = 512,
                 continuous: bool = True):
        self.model, self.tokenizer = model, tokenizer
        self.max_batch_size, self.max_wait = max_batch_size, max_wait_ms / 1000
        self.continuous = continuous
        self.max_pending, self.max_tokens_limit, self.max_prompt_tokens = max_pending, max_tokens_limit, max_prompt_tokens
        self.queue: "queue.Queue[Request | None]" = queue.Queue()
        self.slots = threading.BoundedSemaphore(max_pending)
        self.stats = {"requests": 0, "rejected": 0, "cancelled": 0, "batches": 0, "largest_batch": 0,
                      "joined": 0, "tokens": 0, "busy_seconds": 0.0}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.worker = threading.Thread(target=self._run, name="batching-engine", daemon=True)
        self.worker.start()

    # ---- the API side

    def submit(self, prompt: str, max_tokens: int, temperature: float = 0.0) -> Request | None:
        """Queue a request; ``None`` when ``max_pending`` requests are already queued or running."""
        if not self.slots.acquire(blocking=False):
            with self.lock:
                self.stats["rejected"] += 1
            return None
        request = Request(prompt, max_tokens, temperature)
        with self.lock:
            self.stats["requests"] += 1
        self.queue.put(request)
        return request

    def pending(self) -> int:
        return self.max_pending - self.slots._value                     # queued + running

    def close(self, timeout: float = 10.0) -> None:
        self.stopping.set()
        self.queue.put(None)
        self.worker.join(timeout)

    # ---- the worker

    def _release(self, request: Request, reason: str) -> None:
        request.events.put(("done", reason))
        if reason == "cancelled":
            with self.lock:
                self.stats["cancelled"] += 1
        self.slots.release()

    def _next_batch(self) -> list[Request]:
        first = self.queue.get()
        if first is None:
            return []
        batch, deadline = [first], time.perf_counter() + self.max_wait
        while len(batch) < self.max_batch_size:
            remaining = deadline - time.perf_counter()
            try:
                item = self.queue.get(timeout=max(remaining, 0)) if remaining > 0 else self.queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self.stopping.set()
                break
            batch.append(item)
        live = []
        for request in batch:
            if request.cancelled.is_set():
                self._release(request, "cancelled")
            else:
                live.append(request)
        return live

    def _run(self) -> None:
        while not self.stopping.is_set():
            batch = self._next_batch()
            if not batch:
                continue
            start = time.perf_counter()
            try:
                self._decode(batch)
            except Exception as error:                                  # a broken batch must not kill the server
                for request in batch:
                    request.events.put(("error", f"{type(error).__name__}: {error}"))
                    self._release(request, "error")
            with self.lock:
                self.stats["batches"] += 1
                self.stats["largest_batch"] = max(self.stats["largest_batch"], len(batch))
                self.stats["busy_seconds"] += time.perf_counter() - start

    def _prefill(self, requests: list[Request]):
        """One forward pass over the (left-padded) prompts: the cache, last logits (b, V) and mask (b, T)."""
        tok = self.tokenizer
        encoded = [tok(r.prompt).input_ids[-self.max_prompt_tokens:] for r in requests]
        for request, ids in zip(requests, encoded):
            request.prompt_tokens = len(ids)
        width = max(len(ids) for ids in encoded)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in encoded])        # (b, T) left-padded
        mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in encoded])   # (b, T)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)                                        # (b, T)
        out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True)
        return out.cache, out.logits[:, -1], mask

    @staticmethod
    def _join(cache, mask: torch.Tensor, new_cache, new_mask: torch.Tensor) -> torch.Tensor:
        """Append ``new_cache``'s rows to ``cache`` in place, left-padding the shorter side with masked
        zeros so both have the same length; returns the joined mask (b + b', T)."""
        width = max(mask.shape[1], new_mask.shape[1])

        def left_pad(x: torch.Tensor, dim: int) -> torch.Tensor:
            missing = width - x.shape[dim]
            if missing == 0:
                return x
            shape = list(x.shape)
            shape[dim] = missing
            return torch.cat([x.new_zeros(shape), x], dim=dim)

        for layer, new_layer in zip(cache.layers, new_cache.layers):       # keys/values (b, h_kv, T, d_h)
            layer.keys = torch.cat([left_pad(layer.keys, 2), left_pad(new_layer.keys, 2)], dim=0)
            layer.values = torch.cat([left_pad(layer.values, 2), left_pad(new_layer.values, 2)], dim=0)
        return torch.cat([left_pad(mask, 1), left_pad(new_mask, 1)], dim=0)                # (b + b', T)

    def _waiting(self, room: int) -> list[Request]:
        """Up to ``room`` queued requests, without waiting (continuous batching's newcomers)."""
        newcomers = []
        while len(newcomers) < room:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                break
            if item is None:                                             # close(): finish this batch, then stop
                self.stopping.set()
                break
            if item.cancelled.is_set():
                self._release(item, "cancelled")
            else:
                newcomers.append(item)
        return newcomers

    @torch.no_grad()
    def _decode(self, batch: list[Request]) -> None:
        tok = self.tokenizer
        cache, logits, mask = self._prefill(batch)
        positions = mask.sum(-1) - 1                                     # (B,) position of each row's last token
        active = list(batch)                     # row i of the cache belongs to active[i]
        generated = {id(r): [] for r in batch}
        texts = {id(r): "" for r in batch}
        while active:
            if self.continuous and len(active) < self.max_batch_size and not self.stopping.is_set():
                newcomers = self._waiting(self.max_batch_size - len(active))
                if newcomers:
                    try:
                        new_cache, new_logits, new_mask = self._prefill(newcomers)
                    except Exception as error:                           # a bad newcomer must not stop the batch
                        for request in newcomers:
                            request.events.put(("error", f"{type(error).__name__}: {error}"))
                            self._release(request, "error")
                    else:
                        mask = self._join(cache, mask, new_cache, new_mask)
                        logits = torch.cat([logits, new_logits])                               # (b + b', V)
                        positions = torch.cat([positions, new_mask.sum(-1) - 1])               # (b + b',)
                        for request in newcomers:
                            generated[id(request)], texts[id(request)] = [], ""
                        active += newcomers
                        with self.lock:
                            self.stats["joined"] += len(newcomers)
                            self.stats["largest_batch"] = max(self.stats["largest_batch"], len(active))
            next_ids = self._pick(logits, active)                                               # (b,)
            keep, emitted = [], 0
            for j, request in enumerate(active):
                if request.cancelled.is_set():
                    self._release(request, "cancelled")
                    continue
                token = int(next_ids[j])
                if token == tok.eos_token_id:
                    self._release(request, "stop")
                    continue
                tokens = generated[id(request)]
                tokens.append(token)
                request.completion_tokens += 1
                emitted += 1
                text = tok.decode(tokens, skip_special_tokens=True)
                if not text.endswith("\ufffd"):                         # wait for a whole UTF-8 character
                    request.events.put(text[len(texts[id(request)]):])
                    texts[id(request)] = text
                if len(tokens) >= request.max_tokens:
                    self._release(request, "length")
                    continue
                keep.append(j)
            with self.lock:
                self.stats["tokens"] += emitted
            if not keep:
                break
            if len(keep) < len(active):                                  # finished rows leave the batch
                index = torch.tensor(keep)
                cache.batch_select_indices(index)
                mask, positions, next_ids = mask[index], positions[index], next_ids[index]
                active = [active[j] for j in keep]
            mask = torch.cat([mask, torch.ones(len(active), 1, dtype=mask.dtype)], dim=1)      # (b, T + 1)
            positions = positions + 1                                                          # (b,)
            out = self.model(input_ids=next_ids[:, None], attention_mask=mask, position_ids=positions[:, None],
                             cache=cache, use_cache=True)
            cache, logits = out.cache, out.logits[:, -1]

    @staticmethod
    def _pick(logits: torch.Tensor, requests: list[Request]) -> torch.Tensor:
        """Greedy for temperature 0, sampling from softmax(logits / temperature) otherwise; (b, V) -> (b,)."""
        picked = logits.argmax(-1)
        for j, request in enumerate(requests):
            if request.temperature > 0:
                probs = torch.softmax(logits[j].float() / request.temperature, -1)
                picked[j] = torch.multinomial(probs, 1)[0]
        return picked


# =========================================================================== the HTTP API


def create_app(engine: BatchingEngine, model_name: str = MODEL_NAME):
    """The FastAPI application over ``engine``."""
    from fastapi import FastAPI, Request as HTTPRequest
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel, ConfigDict, Field
    from sse_starlette.sse import EventSourceResponse

    class CompletionRequest(BaseModel):
        model_config = ConfigDict(extra="ignore")
        model: str = model_name
        prompt: str = Field(min_length=1, max_length=20_000)
        max_tokens: int = Field(16, ge=1, le=engine.max_tokens_limit)
        temperature: float = Field(0.0, ge=0.0, le=2.0)
        stream: bool = False

    app = FastAPI(title="course completion server")

    def error(status: int, message: str, kind: str = "invalid_request_error"):
        return JSONResponse(status_code=status, content={"error": {"message": message, "type": kind}})

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: HTTPRequest, exc: RequestValidationError):
        problems = []
        for item in exc.errors():
            where = ".".join(str(part) for part in item.get("loc", ()) if part != "body") or "body"
            problems.append(f"{where}: {item.get('msg', 'invalid')}")
        return error(400, "invalid request: " + "; ".join(problems))

    def chunk(request: Request, text: str, finish_reason):
        return {"id": request.id, "object": "text_completion", "created": int(request.created), "model": model_name,
                "choices": [{"text": text, "index": 0, "finish_reason": finish_reason}]}

    async def next_event(request: Request):
        while True:                     # poll the thread-safe queue without blocking the event loop
            try:
                return request.events.get_nowait()
            except queue.Empty:
                await asyncio.sleep(0.005)

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "owned_by": "course"}]}

    @app.get("/stats")
    async def stats():
        with engine.lock:
            return {**engine.stats, "pending": engine.pending(), "max_batch_size": engine.max_batch_size}

    async def completions(body: CompletionRequest):
        request = engine.submit(body.prompt, body.max_tokens, body.temperature)
        if request is None:
            return error(429, f"server busy: {engine.max_pending} requests are queued or running; retry later",
                         "rate_limit_error")
        if body.stream:
            async def events():
                try:
                    while True:
                        item = await next_event(request)
                        if isinstance(item, tuple):
                            if item[0] == "error":
                                yield {"data": json.dumps({"error": {"message": item[1], "type": "server_error"}})}
                            else:
                                yield {"data": json.dumps(chunk(request, "", item[1]))}
                            yield {"data": "[DONE]"}
                            return
                        yield {"data": json.dumps(chunk(request, item, None))}
                finally:
                    request.cancel()             # a client that went away frees its row and its slot
            return EventSourceResponse(events(), ping=600)
        pieces = []
        try:
            while True:
                item = await next_event(request)
                if isinstance(item, tuple):
                    break
                pieces.append(item)
        finally:
            request.cancel()
        if item[0] == "error":
            return error(500, item[1], "server_error")
        result = chunk(request, "".join(pieces), item[1])
        result["usage"] = {"prompt_tokens": request.prompt_tokens, "completion_tokens": request.completion_tokens,
                           "total_tokens": request.prompt_tokens + request.completion_tokens}
        return result

    # This module's annotations are strings (``from __future__ import annotations``) and the body's class
    # is local, so FastAPI is handed the class itself.
    completions.__annotations__["body"] = CompletionRequest
    app.post("/v1/completions")(completions)
    return app


# =========================================================================== running it


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LocalServer:
    """The server in a background thread, on 127.0.0.1 only; a context manager that always stops it.

    >>> with LocalServer(model, tokenizer, max_batch_size=8) as server:     # doctest: +SKIP
    ...     complete(server.url, "Once upon a time", max_tokens=8)
    """

    def __init__(self, model, tokenizer, port: int | None = None, start_timeout: float = 30.0,
                 stop_timeout: float = 15.0, **engine_options):
        self.engine = BatchingEngine(model, tokenizer, **engine_options)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.start_timeout, self.stop_timeout = start_timeout, stop_timeout
        self.server = None
        self.thread = None

    def start(self) -> "LocalServer":
        import uvicorn

        config = uvicorn.Config(create_app(self.engine), host="127.0.0.1", port=self.port, log_level="warning",
                                access_log=False, lifespan="off", timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name=f"uvicorn-{self.port}", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + self.start_timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the server did not start on {self.url} within {self.start_timeout:.0f} s")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(self.stop_timeout)
            if self.thread.is_alive():
                self.server.force_exit = True
                self.thread.join(self.stop_timeout)
        self.engine.close(self.stop_timeout)

    def __enter__(self) -> "LocalServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# =========================================================================== clients


def complete(url: str, prompt: str, max_tokens: int = 16, timeout: float = 120.0, **options) -> dict:
    """One non-streamed completion: the server's JSON answer (raises for a status >= 400)."""
    import httpx

    response = httpx.post(f"{url}/v1/completions", json={"prompt": prompt, "max_tokens": max_tokens, **options},
                          timeout=timeout)
    response.raise_for_status()
    return response.json()


def stream(url: str, prompt: str, max_tokens: int = 16, timeout: float = 120.0, **options):
    """Yield the text pieces of a streamed completion as the server sends them (server-sent events)."""
    import httpx

    body = {"prompt": prompt, "max_tokens": max_tokens, "stream": True, **options}
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=timeout) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data:"):
                continue
            data = line[len("data:"):].strip()
            if data == "[DONE]":
                return
            event = json.loads(data)
            if "error" in event:
                raise RuntimeError(event["error"]["message"])
            text = event["choices"][0]["text"]
            if text:
                yield text


def load_test(url: str, prompts: list[str], n_clients: int, max_tokens: int, timeout: float = 300.0) -> dict:
    """``n_clients`` clients at once, each streaming one completion of ``max_tokens`` tokens.

    Returns throughput (generated tokens per second of wall time), per-request latency (p50, p95)
    and time to first token (p50). Loopback only; bounded by ``timeout`` per request.
    """
    import httpx

    def one(i: int) -> dict:
        body = {"prompt": prompts[i % len(prompts)], "max_tokens": max_tokens, "stream": True}
        start = time.perf_counter()
        first, n_pieces = None, 0
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=timeout) as response:
            response.raise_for_status()
            for line in response.iter_lines():
                if line.startswith("data:") and line[5:].strip() != "[DONE]":
                    event = json.loads(line[5:])
                    if event["choices"][0]["text"]:
                        n_pieces += 1
                        first = first or time.perf_counter() - start
        return {"latency": time.perf_counter() - start, "ttft": first or float("nan")}

    stats_before = httpx.get(f"{url}/stats", timeout=10).json()
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=n_clients) as pool:
        results = list(pool.map(one, range(n_clients)))
    wall = time.perf_counter() - start
    stats_after = httpx.get(f"{url}/stats", timeout=10).json()
    tokens = stats_after["tokens"] - stats_before["tokens"]
    latencies = sorted(r["latency"] for r in results)
    return {"clients": n_clients, "tokens": tokens, "seconds": wall, "throughput": tokens / wall,
            "latency_p50": statistics.median(latencies),
            "latency_p95": latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))],
            "ttft_p50": statistics.median(r["ttft"] for r in results),
            "largest_batch": stats_after["largest_batch"], "joined": stats_after["joined"] - stats_before["joined"]}

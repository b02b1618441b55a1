"""An OpenAI-compatible HTTP server on the continuous-batching Engine (stdlib only).

    srv = OpenAIServer(model, tokenizer, model_name="tiny", port=0).start()   # a background thread
    srv.url                          # http://127.0.0.1:<port>/v1 : point the openai client here
    srv.close()

    llmforge serve runs/tiny/final --port 8000                                 # the same, from the shell

Routes: POST /v1/chat/completions and POST /v1/completions (with "stream": true the answer
comes as server-sent events in OpenAI's chunk format, ending with "data: [DONE]"),
GET /v1/models and GET /v1/models/<id>.

One engine thread owns the Engine: HTTP threads (ThreadingHTTPServer) validate a request,
tokenize it and hand it over through a queue; the engine thread admits it into the running
batch at its next step and sends text deltas back per request. At most max_queue requests
are in flight (queued or running); past that a request gets HTTP 429 at once. Limits per
request: max_tokens <= max_tokens_cap, prompt <= max_prompt_tokens, prompt + max_tokens <=
the model's context. Errors use OpenAI's shape {"error": {"message", "type", "param", "code"}}:
400 for bad JSON, unknown fields, wrong types and bad values; 404 for an unknown model or
route; 405 for a wrong method; 413 for an oversized body; 429 when the queue is full. A
client that goes away mid-stream has its request aborted (its cache blocks freed).
"""
from __future__ import annotations

import json
import math
import queue
import secrets
import threading
import time
import traceback
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ..data.chat import ROLES, render_chat, validate_conversation
from .load import prompt_ids, stop_token_ids
from .sampling import SamplingParams
from .serving_engine import Engine
from .stop import normalize_stop

MAX_BODY = 4 << 20


class APIError(Exception):
    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# ---- the engine thread -----------------------------------------------------------------------
@dataclass
class _Job:
    index: int
    prompt: list[int]
    max_tokens: int
    params: SamplingParams
    stop_ids: set
    stop: list[str]
    seed: int
    events: queue.Queue         # (index, text_delta, n_tokens, finish_reason | None); on "error" /
                                # "server_error" the text is the message
    rid: int | None = None


class EngineWorker:
    """Runs Engine.step() on one thread; jobs come in through a queue, deltas go out per job."""

    def __init__(self, engine: Engine, max_queue: int = 64):
        self.engine = engine
        self.max_queue = max_queue
        self._inbox: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._in_flight = 0
        self._jobs: dict[int, _Job] = {}            # rid -> job (engine thread only)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="llmforge-engine", daemon=True)

    def start(self) -> "EngineWorker":
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._inbox.put(("wake",))
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def submit(self, jobs: list[_Job]) -> None:
        """Queue jobs (all or none); APIError 429 when they do not fit in the queue."""
        with self._lock:
            if self._in_flight + len(jobs) > self.max_queue:
                raise APIError(429, f"the server is busy: {self._in_flight} requests in flight (limit "
                                    f"{self.max_queue}); retry later", "rate_limit_error", None, "queue_full")
            self._in_flight += len(jobs)
        for j in jobs:
            self._inbox.put(("submit", j))

    def cancel(self, jobs: list[_Job]) -> None:
        for j in jobs:
            self._inbox.put(("cancel", j))

    def _release(self, n: int = 1) -> None:
        with self._lock:
            self._in_flight -= n

    def _finish(self, job: _Job, reason: str, text: str = "") -> None:
        job.events.put((job.index, text, 0, reason))
        if job.rid is not None:
            self._jobs.pop(job.rid, None)
        self._release()

    def _on_token(self, rid, tok, delta, finish):
        job = self._jobs.get(rid)
        if job is None:
            return
        job.events.put((job.index, delta or "", 1, finish))
        if finish:
            del self._jobs[rid]
            self._release()

    def _handle(self, msg) -> None:
        kind = msg[0]
        if kind == "submit":
            job = msg[1]
            try:
                job.rid = self.engine.submit(job.prompt, job.max_tokens, job.params, job.stop_ids, job.seed,
                                             stop=job.stop, on_token=self._on_token)
                self._jobs[job.rid] = job
            except ValueError as e:
                self._finish(job, "error", str(e))
            except Exception as e:  # never leave a client waiting on a job the engine did not take
                self._finish(job, "server_error", f"engine error: {type(e).__name__}: {e}")
        elif kind == "cancel":
            job = msg[1]
            if job.rid is not None and job.rid in self._jobs and self.engine.abort(job.rid):
                self._finish(job, "abort")

    def _loop(self) -> None:
        eng = self.engine
        while not self._stop.is_set():
            busy = bool(eng.waiting or eng.running)
            try:
                self._handle(self._inbox.get_nowait() if busy else self._inbox.get(timeout=0.5))
                while True:
                    self._handle(self._inbox.get_nowait())
            except queue.Empty:
                pass
            if self._stop.is_set():
                break
            if eng.waiting or eng.running:
                try:
                    eng.step()
                except Exception as e:  # a broken step must not hang the clients: fail what is in flight
                    traceback.print_exc()
                    for job in list(self._jobs.values()):
                        eng.abort(job.rid)
                        self._finish(job, "server_error", f"engine error: {type(e).__name__}: {e}")
        for job in list(self._jobs.values()):
            self._finish(job, "server_error", "the server is shutting down")


# ---- request validation ------------------------------------------------------------------------
_COMMON = {"model", "max_tokens", "temperature", "top_p", "n", "stream", "stop", "seed", "frequency_penalty",
           "presence_penalty", "stream_options", "user", "top_k", "min_p", "repetition_penalty", "logprobs",
           "logit_bias", "metadata", "store"}
CHAT_FIELDS = _COMMON | {"messages", "max_completion_tokens", "top_logprobs", "response_format", "tools",
                         "tool_choice", "parallel_tool_calls"}
COMPLETION_FIELDS = _COMMON | {"prompt", "echo", "suffix", "best_of"}


def _num(body, name, lo=None, hi=None, integer=False, default=None):
    v = body.get(name)
    if v is None:
        return default
    ok = isinstance(v, int) if integer else isinstance(v, (int, float))
    if isinstance(v, bool) or not ok or (not integer and not math.isfinite(v)):
        raise APIError(400, f"'{name}' must be {'an integer' if integer else 'a number'}, got {v!r}", param=name)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise APIError(400, f"'{name}' must be in [{lo}, {hi}], got {v!r}", param=name)
    return v


def _bool(body, name, default=False):
    v = body.get(name)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise APIError(400, f"'{name}' must be a boolean, got {v!r}", param=name)
    return v


def _check_fields(body: dict, allowed: set) -> None:
    for k in body:
        if k not in allowed:
            raise APIError(400, f"Unrecognized request argument supplied: {k}", param=k)
    if body.get("n") not in (None, 1):
        raise APIError(400, "only n=1 is supported", param="n")
    if body.get("best_of") not in (None, 1):
        raise APIError(400, "only best_of=1 is supported", param="best_of")
    if body.get("logprobs") not in (None, False, 0):
        raise APIError(400, "logprobs are not supported", param="logprobs")
    if body.get("top_logprobs") not in (None, 0):
        raise APIError(400, "top_logprobs are not supported", param="top_logprobs")
    if body.get("logit_bias") not in (None, {}):
        raise APIError(400, "logit_bias is not supported", param="logit_bias")
    if body.get("suffix") not in (None, ""):
        raise APIError(400, "suffix is not supported", param="suffix")
    if body.get("tools"):
        raise APIError(400, "tools are not supported", param="tools")
    rf = body.get("response_format")
    if rf is not None and rf != {"type": "text"}:
        raise APIError(400, "only response_format {'type': 'text'} is supported", param="response_format")
    so = body.get("stream_options")
    if so is not None and (not isinstance(so, dict) or set(so) - {"include_usage", "include_obfuscation"}):
        raise APIError(400, "stream_options must be an object with include_usage", param="stream_options")
    if so is not None and not body.get("stream"):
        raise APIError(400, "stream_options is only allowed with stream=true", param="stream_options")


def _sampling(body) -> tuple[SamplingParams, int]:
    try:
        p = SamplingParams(temperature=_num(body, "temperature", 0, 2, default=1.0),
                           top_p=_num(body, "top_p", 0, 1, default=1.0),
                           top_k=_num(body, "top_k", 0, None, integer=True, default=0),
                           min_p=_num(body, "min_p", 0, 1, default=0.0),
                           repetition_penalty=_num(body, "repetition_penalty", 0, None, default=1.0),
                           frequency_penalty=_num(body, "frequency_penalty", -2, 2, default=0.0),
                           presence_penalty=_num(body, "presence_penalty", -2, 2, default=0.0))
    except ValueError as e:
        raise APIError(400, str(e)) from None
    seed = _num(body, "seed", None, None, integer=True)
    return p, (secrets.randbits(63) if seed is None else seed % (2**63))


def _message_text(m, i) -> dict:
    if not isinstance(m, dict):
        raise APIError(400, f"messages[{i}] must be an object", param="messages")
    role, content = m.get("role"), m.get("content")
    if role == "developer":
        role = "system"
    if role not in ROLES:
        raise APIError(400, f"messages[{i}].role must be one of {ROLES}, got {role!r}", param="messages")
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise APIError(400, f"messages[{i}].content: only text parts are supported", param="messages")
            parts.append(part["text"])
        content = "".join(parts)
    if not isinstance(content, str):
        raise APIError(400, f"messages[{i}].content must be a string or a list of text parts", param="messages")
    return {"role": role, "content": content}


def _failure(finish: str, message: str) -> tuple:
    return (400, message) if finish == "error" else (500, message, "server_error")


# ---- the server ------------------------------------------------------------------------------
class OpenAIServer:
    def __init__(self, model, tokenizer, model_name: str = "llmforge", host: str = "127.0.0.1", port: int = 8000,
                 chat_template: str = "chatml", max_queue: int = 64, max_batch: int = 8, num_blocks: int | None = None,
                 block_size: int = 16, max_tokens_cap: int = 1024, max_prompt_tokens: int | None = None,
                 verbose: bool = False):
        if tokenizer is None:
            raise ValueError("serving needs a tokenizer (tokenizer.json beside the model, or one in the GGUF)")
        self.model_name = model_name
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.max_seq_len = model.cfg.max_seq_len
        self.max_tokens_cap = max_tokens_cap
        self.max_prompt_tokens = min(max_prompt_tokens or self.max_seq_len - 1, self.max_seq_len - 1)
        self.stop_chat = stop_token_ids(tokenizer, chat_template)
        self.stop_text = stop_token_ids(tokenizer, None)
        self.verbose = verbose
        self.created = int(time.time())
        if num_blocks is None:
            num_blocks = max_batch * -(-self.max_seq_len // block_size)
        self.engine = Engine(model, num_blocks=num_blocks, block_size=block_size, max_batch=max_batch,
                             tokenizer=tokenizer)
        self.worker = EngineWorker(self.engine, max_queue)
        self.httpd = ThreadingHTTPServer((host, port), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.app = self
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self.httpd.server_address[0]}:{self.port}/v1"

    def start(self) -> "OpenAIServer":
        """Serve on background threads (returns at once)."""
        self.worker.start()
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="llmforge-http", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.worker.start()
        try:
            self.httpd.serve_forever()
        finally:
            self.worker.close()
            self.httpd.server_close()

    def close(self) -> None:
        if self._thread is not None:          # shutdown() would wait forever for a loop that never ran
            self.httpd.shutdown()
            self._thread.join(timeout=10)
        self.httpd.server_close()
        self.worker.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    # ---- building jobs ----------------------------------------------------------------------
    def _check_model(self, body) -> None:
        name = body.get("model")
        if not isinstance(name, str) or not name:
            raise APIError(400, "'model' is required and must be a string", param="model")
        if name != self.model_name:
            raise APIError(404, f"The model '{name}' does not exist (this server has '{self.model_name}')",
                           param="model", code="model_not_found")

    def _limits(self, body, prompt_len: int, default_max: int | None, *names) -> int:
        if prompt_len > self.max_prompt_tokens:
            raise APIError(400, f"the prompt has {prompt_len} tokens; this server accepts at most "
                                f"{self.max_prompt_tokens}", param="messages" if "max_completion_tokens" in names
                           else "prompt", code="context_length_exceeded")
        room = self.max_seq_len - prompt_len
        want = None
        for n in names:
            v = _num(body, n, 1, None, integer=True)
            if v is not None:
                want, name = v, n
        if want is None:
            return max(1, min(room, self.max_tokens_cap, default_max or room))
        if want > self.max_tokens_cap:
            raise APIError(400, f"'{name}' is {want}; this server allows at most {self.max_tokens_cap}", param=name)
        if want > room:
            raise APIError(400, f"the prompt ({prompt_len} tokens) plus {name} ({want}) exceeds the model's context "
                                f"of {self.max_seq_len} tokens", param=name, code="context_length_exceeded")
        return want

    def _chat_jobs(self, body, events) -> tuple[list[_Job], list[int]]:
        _check_fields(body, CHAT_FIELDS)
        self._check_model(body)
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise APIError(400, "'messages' must be a non-empty list", param="messages")
        msgs = [_message_text(m, i) for i, m in enumerate(msgs)]
        try:
            msgs = validate_conversation(msgs, "messages")
            text = render_chat(msgs, self.chat_template, add_generation_prompt=True,
                               bos_token=self.tokenizer.bos_token or "", eos_token=self.tokenizer.eos_token or "")
        except ValueError as e:
            raise APIError(400, str(e), param="messages") from None
        prompt = list(self.tokenizer.encode(text))
        return self._jobs(body, [prompt], events, self.stop_chat, None, "max_tokens", "max_completion_tokens")

    def _completion_jobs(self, body, events) -> tuple[list[_Job], list[int]]:
        _check_fields(body, COMPLETION_FIELDS)
        self._check_model(body)
        p = body.get("prompt")
        if isinstance(p, str):
            prompts = [p]
        elif isinstance(p, list) and p and all(isinstance(x, str) for x in p):
            prompts = p
        elif isinstance(p, list) and p and all(isinstance(x, int) and not isinstance(x, bool) for x in p):
            prompts = [p]
        elif (isinstance(p, list) and p and all(isinstance(x, list) and x for x in p)
              and all(isinstance(t, int) and not isinstance(t, bool) for x in p for t in x)):
            prompts = p
        else:
            raise APIError(400, "'prompt' must be a string, a list of strings, a list of token ids or a list of "
                                "token-id lists", param="prompt")
        if len(prompts) > self.worker.max_queue:
            raise APIError(400, f"at most {self.worker.max_queue} prompts per request", param="prompt")
        ids = []
        for x in prompts:
            t = prompt_ids(self.tokenizer, x) if isinstance(x, str) else list(x)
            if not t:
                raise APIError(400, "a prompt encodes to no tokens", param="prompt")
            if any(not 0 <= i < self.engine.cfg.vocab_size for i in t):
                raise APIError(400, "prompt token ids outside the vocabulary", param="prompt")
            ids.append(t)
        return self._jobs(body, ids, events, self.stop_text, 16, "max_tokens")

    def _jobs(self, body, prompts, events, stop_ids, default_max, *names):
        params, seed = _sampling(body)
        try:
            stop = normalize_stop(body.get("stop"))
        except ValueError as e:
            raise APIError(400, str(e), param="stop") from None
        if len(stop) > 4:
            raise APIError(400, "at most 4 stop sequences", param="stop")
        jobs = []
        for i, pr in enumerate(prompts):
            n = self._limits(body, len(pr), default_max, *names)
            need = -(-(len(pr) + n) // self.engine.cache.block_size)
            if need > self.engine.cache.num_blocks:
                raise APIError(400, f"the request needs {need} cache blocks; the server has "
                                    f"{self.engine.cache.num_blocks}",
                               param=names[0])
            jobs.append(_Job(i, pr, n, params, set(stop_ids), stop, seed, events))
        return jobs, [len(p) for p in prompts]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "llmforge"

    @property
    def app(self) -> OpenAIServer:
        return self.server.app

    def log_message(self, fmt, *args):
        if self.app.verbose:
            super().log_message(fmt, *args)

    # ---- plumbing -------------------------------------------------------------------------------
    def _send_json(self, status: int, obj, headers=()) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, e: APIError) -> None:
        headers = [("Retry-After", "1")] if e.status == 429 else []
        if self.command in ("POST", "PUT", "DELETE") and not self._consumed:
            self.close_connection = True          # the unread body would corrupt the next request
        if self.close_connection:
            headers.append(("Connection", "close"))
        self._send_json(e.status, e.body(), headers)

    def _body(self) -> dict:
        n = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            raise APIError(400, "chunked request bodies are not supported; send Content-Length")
        try:
            n = int(n)
        except (TypeError, ValueError):
            raise APIError(400, "a JSON body with a Content-Length header is required") from None
        if n < 0 or n > MAX_BODY:
            self.close_connection = True
            raise APIError(413, f"the request body is {n} bytes; the limit is {MAX_BODY}")
        raw = self.rfile.read(n)
        self._consumed = True
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise APIError(400, f"the body is not valid JSON: {e}") from None
        if not isinstance(body, dict):
            raise APIError(400, "the body must be a JSON object")
        return body

    def _route(self, method: str):
        path = self.path.split("?", 1)[0].rstrip("/")
        routes = {"/v1/chat/completions": ("POST", self._chat), "/v1/completions": ("POST", self._completions),
                  "/v1/models": ("GET", self._models)}
        if path in routes:
            want, fn = routes[path]
            if want != method:
                raise APIError(405, f"{method} is not allowed on {path}; use {want}", code="method_not_allowed")
            return fn, None
        if path.startswith("/v1/models/"):
            if method != "GET":
                raise APIError(405, f"{method} is not allowed on {path}; use GET", code="method_not_allowed")
            return self._model, path[len("/v1/models/"):]
        raise APIError(404, f"no route {method} {path}", code="not_found")

    def _dispatch(self, method: str) -> None:
        self._consumed = False
        try:
            fn, arg = self._route(method)
            if method == "POST":
                fn(self._body())
            else:
                fn(arg) if arg is not None else fn()
        except APIError as e:
            self._error(e)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as e:  # never leave a client without an answer
            traceback.print_exc()
            try:
                self._error(APIError(500, f"internal error: {type(e).__name__}: {e}", "server_error"))
            except OSError:
                self.close_connection = True

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def do_DELETE(self):
        self._dispatch("DELETE")

    def do_PUT(self):
        self._dispatch("PUT")

    # ---- routes -------------------------------------------------------------------------------
    def _model_obj(self) -> dict:
        return {"id": self.app.model_name, "object": "model", "created": self.app.created, "owned_by": "llmforge"}

    def _models(self):
        self._send_json(200, {"object": "list", "data": [self._model_obj()]})

    def _model(self, name):
        if name != self.app.model_name:
            raise APIError(404, f"The model '{name}' does not exist", param="model", code="model_not_found")
        self._send_json(200, self._model_obj())

    def _chat(self, body):
        events: queue.Queue = queue.Queue()
        jobs, plens = self.app._chat_jobs(body, events)
        self._run(body, jobs, plens, events, chat=True)

    def _completions(self, body):
        events: queue.Queue = queue.Queue()
        jobs, plens = self.app._completion_jobs(body, events)
        self._run(body, jobs, plens, events, chat=False)

    def _collect(self, jobs, events):
        """Yield (index, delta, n_tokens, finish) until every job has finished."""
        open_ = len(jobs)
        while open_:
            ev = events.get()
            if ev[3] is not None:
                open_ -= 1
            yield ev

    def _run(self, body, jobs, plens, events, chat: bool):
        app = self.app
        stream = _bool(body, "stream")
        echo = _bool(body, "echo") if not chat else False
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        app.worker.submit(jobs)
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        texts = [app.tokenizer.decode(j.prompt) if echo else "" for j in jobs]
        n_out = [0] * len(jobs)
        finish = [None] * len(jobs)
        if not stream:
            try:
                for i, delta, n, fin in self._collect(jobs, events):
                    if fin in ("error", "server_error"):
                        raise APIError(*_failure(fin, delta))
                    texts[i] += delta
                    n_out[i] += n
                    finish[i] = fin
            except BaseException:
                app.worker.cancel(jobs)
                raise
            usage = {"prompt_tokens": sum(plens), "completion_tokens": sum(n_out),
                     "total_tokens": sum(plens) + sum(n_out)}
            if chat:
                choices = [{"index": 0, "message": {"role": "assistant", "content": texts[0]},
                            "finish_reason": finish[0], "logprobs": None}]
                obj = {"id": rid, "object": "chat.completion", "created": created, "model": app.model_name,
                       "choices": choices, "usage": usage}
            else:
                choices = [{"index": i, "text": texts[i], "finish_reason": finish[i], "logprobs": None}
                           for i in range(len(jobs))]
                obj = {"id": rid, "object": "text_completion", "created": created, "model": app.model_name,
                       "choices": choices, "usage": usage}
            self._send_json(200, obj)
            return
        # streaming: server-sent events over a chunked response
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        obj_name = "chat.completion.chunk" if chat else "text_completion"

        def chunk(choices, usage=None):
            c = {"id": rid, "object": obj_name, "created": created, "model": app.model_name, "choices": choices}
            if include_usage:
                c["usage"] = usage
            self._write_event(json.dumps(c))

        try:
            if chat:
                chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None,
                        "logprobs": None}])
            elif echo:
                for i, t in enumerate(texts):
                    chunk([{"index": i, "text": t, "finish_reason": None, "logprobs": None}])
            for i, delta, n, fin in self._collect(jobs, events):
                n_out[i] += n
                if fin in ("error", "server_error"):
                    err = APIError(*_failure(fin, delta)).body()
                    self._write_event(json.dumps(err))
                    app.worker.cancel(jobs)
                    break
                if chat:
                    if delta:
                        chunk([{"index": 0, "delta": {"content": delta}, "finish_reason": None, "logprobs": None}])
                    if fin:
                        chunk([{"index": 0, "delta": {}, "finish_reason": fin, "logprobs": None}])
                elif delta or fin:
                    chunk([{"index": i, "text": delta, "finish_reason": fin, "logprobs": None}])
            if include_usage:
                chunk([], {"prompt_tokens": sum(plens), "completion_tokens": sum(n_out),
                           "total_tokens": sum(plens) + sum(n_out)})
            self._write_event("[DONE]")
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, OSError):
            app.worker.cancel(jobs)
            self.close_connection = True

    def _write_event(self, data: str) -> None:
        payload = f"data: {data}\n\n".encode()
        self.wfile.write(f"{len(payload):x}\r\n".encode() + payload + b"\r\n")
        self.wfile.flush()

"""``elmo serve`` as a client sees it: the real server in a subprocess on a free loopback
port, a real HTTP client (httpx), results compared with direct calls of the model."""

from __future__ import annotations

import asyncio
import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="elmo serve needs the serve extra (fastapi, uvicorn)")
pytest.importorskip("uvicorn", reason="elmo serve needs the serve extra (fastapi, uvicorn)")
pa = pytest.importorskip("pyarrow", reason="elmo serve needs the serve extra (pyarrow)")
httpx = pytest.importorskip("httpx", reason="the serve tests need httpx")

import elmo  # noqa: E402
from conftest import ROOT, tiny_model  # noqa: E402
from conftest import short_sentences as _sentences  # noqa: E402
from elmo import cli  # noqa: E402
from elmo.choices import LAYERS  # noqa: E402
from elmo.serve.batcher import pool_mean  # noqa: E402

# A sentence's outputs do not depend on its batch up to float32 rounding (a matrix product
# may round a row differently by its position in the batch: up to 1e-7 on the tiny model).
ATOL = 1e-6
LIMITS = ["--max-sentences", "8", "--max-tokens", "20", "--max-body-bytes", "4000"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python -m elmo serve`` on the tiny model (plain engine, one torch thread)."""

    def __init__(self, *args: str) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [sys.executable, "-m", "elmo", "serve", "--model", str(tiny_model()), "--engine", "plain"]
        argv += ["--port", str(self.port), "--threads", "1", "--log-level", "warning", *args]
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
        }
        self.process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        # One client for the test's calls (plain HTTP: no certificates to load for each call).
        self.client = httpx.Client(base_url=self.url, timeout=60, verify=False)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"elmo serve exited with {self.process.returncode}: {self.process.stderr.read()}"
                )
            if self.accepts() and self.client.get("/healthz").status_code == 200:
                return
            time.sleep(0.1)
        self.stop()
        raise AssertionError("elmo serve did not answer /healthz within 120 s")

    def accepts(self) -> bool:
        """Whether the port takes connections."""
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=5).close()
        except OSError:
            return False
        return True

    def stop(self) -> tuple[int, str]:
        self.client.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            _, err = self.process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, err = self.process.communicate()
        return self.process.returncode, err

    def metric(self, name: str) -> float:
        text = self.client.get("/metrics").text
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
        raise AssertionError(f"{name} not in /metrics")


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    s = Server("--max-wait-ms", "20", *LIMITS)
    yield s
    code, err = s.stop()
    assert code == 0, err


@pytest.fixture(scope="module")
def model(tiny_plain_module: elmo.ElmoModule) -> elmo.ElmoModule:
    """The served model, called directly."""
    return tiny_plain_module


def _expected(
    model: elmo.ElmoModule, tokens: list[list[str]], layers: str, pool: str | None
) -> list[np.ndarray]:
    arrays = model.embed(tokens, layers)
    return [pool_mean(a) for a in arrays] if pool else arrays


def _from_json(body: dict) -> list[np.ndarray]:
    return [np.asarray(e, dtype=np.float32) for e in body["embeddings"]]


def _from_npy(content: bytes, pooled: bool) -> list[np.ndarray]:
    """The per-sentence arrays of the binary layout (lengths, then the padded array)."""
    f = io.BytesIO(content)
    lengths = np.load(f)
    data = np.load(f)
    assert lengths.dtype == np.int64 and data.dtype == np.float32 and f.read() == b""
    if pooled:  # [N, D] or [N, L, D]
        return list(data)
    return [data[i, ..., :n, :] for i, n in enumerate(lengths)]


def _from_arrow(content: bytes) -> list[np.ndarray]:
    """The per-sentence arrays of an Arrow IPC answer (no padding)."""
    table = pa.ipc.open_stream(content).read_all()
    return [np.asarray(row, dtype=np.float32) for row in table.column("embedding").to_pylist()]


def _same(got: list[np.ndarray], expected: list[np.ndarray]) -> None:
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.shape == e.shape
        np.testing.assert_allclose(g, e, rtol=0, atol=ATOL)


# --------------------------------------------------------------------------- answers
@pytest.mark.parametrize(
    ("layers", "pool"),
    [(layers, None) for layers in LAYERS] + [(x, "mean") for x in LAYERS if x != "default"],
)
def test_json_npy_and_arrow_equal_direct_calls(server, model, layers, pool):
    rng = random.Random(LAYERS.index(layers))
    tokens = _sentences(rng, 4)
    body = {"tokens": tokens, "layers": layers, **({"pool": pool} if pool else {})}
    expected = _expected(model, tokens, layers, pool)
    r = server.client.post("/v1/embed", json=body)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    answer = r.json()
    assert answer["lengths"] == [len(t) for t in tokens] and answer["layers"] == layers
    _same(_from_json(answer), expected)
    r = server.client.post("/v1/embed", json=body, headers={"Accept": "application/x-npy"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-npy"
    f = io.BytesIO(r.content)
    np.testing.assert_array_equal(np.load(f), [len(t) for t in tokens])
    data = np.load(f)
    for i, (e, n) in enumerate(zip(expected, map(len, tokens))):
        if pool or layers == "default":
            np.testing.assert_allclose(data[i], e, rtol=0, atol=ATOL)
        else:  # padded with zeros to the request's longest sentence
            np.testing.assert_allclose(data[i, ..., :n, :], e, rtol=0, atol=ATOL)
            assert not data[i, ..., n:, :].any()
    r = server.client.post("/v1/embed", json=body, headers={"Accept": "application/vnd.apache.arrow.stream"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/vnd.apache.arrow.stream"
    table = pa.ipc.open_stream(r.content).read_all()
    assert table.column("length").to_pylist() == [len(t) for t in tokens]
    assert table.schema.metadata[b"layers"] == layers.encode()
    _same(_from_arrow(r.content), expected)


def test_sentences_are_split_on_spaces_as_the_hub_module(server, model):
    sentences = ["the cat  sat", " über naïve dogs ", "a"]
    r = server.client.post("/v1/embed", json={"sentences": sentences})
    assert r.status_code == 200, r.text
    assert r.json()["lengths"] == [3, 3, 1]
    _same(
        _from_json(r.json()),
        model.embed([s.split(" ") for s in ["the cat sat", "über naïve dogs", "a"]], "elmo"),
    )


# --------------------------------------------------------------------------- refusals
TOO_LONG = " ".join(["w"] * 21)
REFUSALS = [
    # (body or raw bytes, status, message, fields of the error)
    ({"sentences": ["a"] * 9}, 413, "sentences: 9 sentences, over the limit of 8 (--max-sentences)",
     {"limit": "max_sentences", "allowed": 8, "found": 9}),
    ({"sentences": ["a", TOO_LONG]}, 413, "sentences[1]: 21 tokens, over the limit of 20 (--max-tokens)",
     {"limit": "max_tokens", "field": "sentences[1]"}),
    ({"tokens": [["a"], ["w"] * 21]}, 413, "tokens[1]: 21 tokens, over the limit of 20",
     {"limit": "max_tokens"}),
    ({"sentences": ["x" * 5000]}, 413, "body: ", {"limit": "max_body_bytes", "allowed": 4000}),
    (b'{"sentences": ["a"', 422, "the body is not valid JSON", {"field": "body"}),
    (b"[1, 2]", 422, "the body: Input should be an object", {"field": "body"}),
    ({"sentences": "the cat"}, 422, "sentences: Input should be a valid array", {"field": "sentences"}),
    ({"sentences": ["a", 3]}, 422, "sentences[1]: Input should be a valid string",
     {"field": "sentences[1]"}),
    ({"tokens": [["a", None]]}, 422, "tokens[0][1]: Input should be a valid string",
     {"field": "tokens[0][1]"}),
    ({"tokens": ["a b"]}, 422, "tokens[0]: Input should be a valid array", {"field": "tokens[0]"}),
    ({"sentences": []}, 422, "sentences: expected at least one sentence, found an empty list",
     {"field": "sentences"}),
    ({"tokens": [["a"], []]}, 422, "tokens[1]: expected at least one token, found an empty list", {}),
    ({"sentences": ["a", "  "]}, 422, "sentences[1]: expected at least one token, found no tokens", {}),
    ({}, 422, "sentences, tokens: expected exactly one of them, found neither", {}),
    ({"sentences": ["a"], "tokens": [["a"]]}, 422, "expected exactly one of them, found both", {}),
    ({"sentences": ["a"], "layers": "lstm"}, 422, "layers: Input should be 'elmo', 'top'",
     {"field": "layers"}),
    ({"sentences": ["a"], "pool": "max"}, 422, "pool: Input should be 'mean'", {"field": "pool"}),
    ({"sentences": ["a"], "layers": "default", "pool": "mean"}, 422,
     "pool: layers=default is already one vector per sentence", {"field": "pool"}),
    ({"sentences": ["a"], "sentence": ["b"]}, 422, "sentence: unknown field (expected sentences, tokens", {}),
]  # fmt: skip


@pytest.mark.parametrize(("body", "status", "message", "fields"), REFUSALS)
def test_refusals(server, body, status, message, fields):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = server.client.post("/v1/embed", content=content, headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["status"] == status and message in error["message"], error
    assert "\n" not in error["message"]
    assert fields.items() <= error.items(), error


def test_a_chunked_body_over_the_limit_is_refused_while_read(server):
    """No Content-Length: the body is counted as it arrives."""

    def chunks() -> Iterator[bytes]:
        yield b'{"sentences": ["'
        for _ in range(10):
            yield b"x" * 1000

    r = server.client.post("/v1/embed", content=chunks())
    assert r.status_code == 413
    assert r.json()["error"]["limit"] == "max_body_bytes"


def test_unknown_paths_and_methods_answer_json_errors(server):
    r = server.client.get("/v2/embed")
    assert r.status_code == 404 and r.json()["error"]["message"] == "GET /v2/embed: Not Found"
    r = server.client.get("/v1/embed")
    assert r.status_code == 405 and "Method Not Allowed" in r.json()["error"]["message"]


# --------------------------------------------------------------------------- the other endpoints
def test_health_model_docs_and_metrics(server, model):
    assert server.client.get("/healthz").json() == {"status": "ok"}
    ready = server.client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    facts = server.client.get("/v1/model").json()
    assert facts["parameters"] == sum(p.numel() for p in model.bilm.parameters())
    assert facts["options"] == model.config.to_dict()
    assert facts["outputs"]["elmo"] == ["B", "T", 32] and facts["engine"] == "plain"
    assert facts["limits"]["max_sentences"] == 8
    schema = server.client.get("/openapi.json").json()
    embed = schema["paths"]["/v1/embed"]["post"]
    content = embed["responses"]["200"]["content"]
    assert {"application/json", "application/x-npy", "application/vnd.apache.arrow.stream"} <= set(content)
    assert set(embed["requestBody"]["content"]["application/json"]["schema"]["properties"]) == {
        "sentences",
        "tokens",
        "layers",
        "pool",
    }
    assert {"413", "422", "429"} <= set(embed["responses"])
    assert server.client.get("/docs").status_code == 200
    server.client.post("/v1/embed", json={"sentences": []})  # one 422 at least
    text = server.client.get("/metrics").text
    for series in (
        'elmo_http_requests_total{path="/v1/embed",code="422"}',
        "elmo_queue_depth 0",
        "elmo_batch_sentences_bucket",
        "elmo_tokens_per_second",
        "elmo_tokens_embedded_total",
        'elmo_request_latency_seconds_bucket{le="+Inf"}',
    ):
        assert series in text, series


# --------------------------------------------------------------------------- concurrency
def test_200_concurrent_mixed_requests_each_get_their_own_result(server, model):
    rng = random.Random(11)
    requests = []
    for k in range(200):
        tokens = _sentences(rng, rng.randint(1, 4))
        tokens[0] = [f"request{k}", *tokens[0]][:20]  # every request differs from every other
        layers = rng.choice(LAYERS)
        pool = "mean" if layers != "default" and rng.random() < 0.3 else None
        answer = rng.choice(["json", "npy", "arrow"])
        requests.append((tokens, layers, pool, answer))
    calls_before = server.metric("elmo_batch_sentences_count")

    accept = {"json": {}, "npy": {"Accept": "application/x-npy"}}
    accept["arrow"] = {"Accept": "application/vnd.apache.arrow.stream"}

    async def one(client: httpx.AsyncClient, tokens, layers, pool, answer) -> list[np.ndarray]:
        body = {"tokens": tokens, "layers": layers, **({"pool": pool} if pool else {})}
        r = await client.post("/v1/embed", json=body, headers=accept[answer])
        assert r.status_code == 200, r.text
        if answer == "npy":
            return _from_npy(r.content, pool is not None or layers == "default")
        return _from_arrow(r.content) if answer == "arrow" else _from_json(r.json())

    async def all_at_once() -> list[list[np.ndarray]]:
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=120, verify=False) as client:
            return await asyncio.gather(*(one(client, *r) for r in requests))

    answers = asyncio.run(all_at_once())
    for (tokens, layers, pool, _), got in zip(requests, answers):
        _same(got, _expected(model, tokens, layers, pool))
    calls = server.metric("elmo_batch_sentences_count") - calls_before
    assert calls < len(requests)  # requests shared model calls


# --------------------------------------------------------------------------- a slow server
@pytest.fixture
def slow_server() -> Iterator[Server]:
    """A queue of 2 requests and a batch that waits 1.5 s for company. A fresh one for each
    test: once a batch has run, the next starts as soon as as many requests are back."""
    s = Server("--max-queue", "2", "--max-wait-ms", "1500")
    yield s
    code, err = s.stop()
    assert code == 0, err


def test_a_flood_gets_429_with_retry_after_and_the_accepted_are_answered(slow_server, model):
    async def flood() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=slow_server.url, timeout=60, verify=False) as client:
            return await asyncio.gather(
                *(client.post("/v1/embed", json={"tokens": [[f"w{k}", "cat"]]}) for k in range(12))
            )

    responses = asyncio.run(flood())
    refused = [r for r in responses if r.status_code == 429]
    accepted = [(k, r) for k, r in enumerate(responses) if r.status_code == 200]
    assert len(refused) + len(accepted) == 12 and len(refused) >= 8 and accepted
    for r in refused:
        assert int(r.headers["Retry-After"]) >= 1
        error = r.json()["error"]
        assert error["limit"] == "max_queue" and "queue is full (2 requests waiting" in error["message"]
    for k, r in accepted:
        _same(_from_json(r.json()), model.embed([[f"w{k}", "cat"]], "elmo"))
    assert slow_server.metric("elmo_requests_rejected_total") == len(refused)


def test_readyz_says_no_while_the_queue_is_full(slow_server):
    with httpx.Client(base_url=slow_server.url, timeout=30, verify=False) as client:
        threads = [
            threading.Thread(target=client.post, args=("/v1/embed",), kwargs={"json": {"sentences": ["a b"]}})
            for _ in range(2)
        ]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 1.0
        while slow_server.metric("elmo_queue_depth") < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        r = client.get("/readyz")
        for t in threads:
            t.join()
    assert r.status_code == 503 and "queue is full" in r.json()["error"]["message"]
    assert slow_server.client.get("/readyz").status_code == 200


def test_a_client_that_disconnects_frees_its_work(slow_server):
    embedded = slow_server.metric("elmo_sentences_embedded_total")
    cancelled = slow_server.metric("elmo_requests_cancelled_total")
    with pytest.raises(httpx.ReadTimeout):  # gives up while its request waits in the queue
        slow_server.client.post("/v1/embed", json={"sentences": ["gone soon"]}, timeout=0.3)
    deadline = time.monotonic() + 10
    while slow_server.metric("elmo_requests_cancelled_total") == cancelled and time.monotonic() < deadline:
        time.sleep(0.05)
    assert slow_server.metric("elmo_requests_cancelled_total") == cancelled + 1
    assert slow_server.metric("elmo_queue_depth") == 0
    time.sleep(1.6)  # past the batch's wait: nothing was left to compute
    assert slow_server.metric("elmo_sentences_embedded_total") == embedded


# --------------------------------------------------------------------------- shutdown
def test_sigterm_finishes_in_flight_requests_then_exits_0(model):
    server = Server("--max-wait-ms", "1500")
    results: dict[int, httpx.Response] = {}

    def client(k: int) -> None:
        results[k] = server.client.post("/v1/embed", json={"tokens": [[f"w{k}", "sat"]]}, timeout=60)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 1.2
    while server.metric("elmo_queue_depth") < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.metric("elmo_queue_depth") == 3  # in flight, waiting for their batch
    server.process.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    assert not server.accepts()  # no longer accepting connections
    for t in threads:
        t.join()
    code, err = server.stop()
    assert code == 0, err
    assert "Traceback" not in err
    for k in range(3):
        assert results[k].status_code == 200
        _same(_from_json(results[k].json()), model.embed([[f"w{k}", "sat"]], "elmo"))


def test_two_workers_each_load_the_model(model):
    server = Server("--workers", "2")
    try:
        tokens = [["two", "workers"], ["cat"]]
        r = server.client.post("/v1/embed", json={"tokens": tokens, "layers": "top"})
        assert r.status_code == 200, r.text
        _same(_from_json(r.json()), model.embed(tokens, "top"))
        assert server.client.get("/v1/model").json()["pid"] != server.process.pid
    finally:
        code, err = server.stop()
    assert code == 0, err


# --------------------------------------------------------------------------- the command line
def test_missing_extra_is_one_line_naming_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "fastapi", None)  # import fastapi raises ImportError
    assert cli.main(["serve", "--model", str(tiny_model())]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    expected = 'elmo serve needs fastapi, which is not installed: pip install "elmo-embeddings[serve]"'
    assert err.startswith(f"elmo serve: error: {expected}")


def test_the_package_does_not_import_the_extra():
    code = (
        "import sys, elmo, elmo.cli, elmo.serve, elmo.serve.batcher, elmo.commands.serve; "
        "print(sorted(m for m in ('fastapi', 'uvicorn', 'starlette') if m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--max-queue", "0"], "--max-queue: expected a number >= 1, found 0"),
        (["--workers", "0"], "--workers: expected an integer >= 1, found 0"),
        (["--port", "70000"], "--port: expected 0 to 65535, found 70000"),
    ],
)
def test_bad_options_are_one_line_and_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["serve", "--model", str(tiny_model()), *argv])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip() == f"elmo serve: error: {message}"

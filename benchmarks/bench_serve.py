"""``elmo serve`` under load, beside ``m.embed`` offline, on the same sentences and threads.

    python benchmarks/bench_serve.py [--model MODEL] [--threads 2] [--clients 1 8 32 128]
        [--sentences-per-request 8] [--seconds 15] [--requests 2000]
        [--saturation-seconds 15] [--saturation-queue 32] [--append]

Loopback only (the server listens on 127.0.0.1), bounded in requests and time: each level
of concurrent clients runs until ``--requests`` requests or ``--seconds`` seconds. The
model is the bundled default unless ``--model`` names another.

Sentences: the heldout shard of ``../shared/data/public-domain-english`` (tokenized book
text, one sentence a line) when present, else sentences drawn with a book-like length
distribution (log-normal, median 18 tokens). Request k carries sentences
``k*S .. k*S+S-1`` (cyclically; S = ``--sentences-per-request``), layers ``elmo``,
answered as ``application/x-npy``.

1. **Offline**: ``m.embed(sentences, "elmo")`` (batch 64, the fast engine) in this
   process with ``--threads`` torch threads; one warm-up pass (the token cache fills as
   it does in a serving process), then a timed pass; tokens/s. Measured again at the end,
   so that a change in the machine's load shows. Also ``m.embed`` on consecutive windows
   of 32 requests' sentences, one call each: ``m.embed``'s own batching (batches of 64,
   sorted within the window) given only the sentences a service at 32 clients has in
   flight (``m.embed`` itself sorts windows of 1024).
2. **Closed loop**: ``elmo serve --threads T`` in a subprocess; C clients (C in
   ``--clients``), each with one keep-alive HTTP/1.1 connection, send their next request
   as soon as the last is answered. Requests/s, tokens/s (of answered requests), latency
   p50/p95/p99. A first pass over the sentences warms the server's token cache. A sample
   of answers is compared with ``m.embed`` (largest absolute difference).
3. **2x saturation**: a fresh server with ``--max-queue`` ``--saturation-queue``; requests
   arrive open-loop at twice the highest request rate of step 2 for
   ``--saturation-seconds``. Share of 429s, p99 latency of the accepted, 5xx count, and the
   server's resident memory (start, peak, end; sampled every 0.25 s).

The client is a minimal asyncio HTTP/1.1 client (a few lines, no library), so that on a
small machine the load generator takes as little CPU from the server as it can; it runs
on the same cores as the server, which the offline figure does not pay for.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import random
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SHARED_SENTENCES = ROOT.parent / "shared" / "data" / "public-domain-english" / "sentences" / "heldout"


# ---------------------------------------------------------------------------- inputs
def _sentences(limit: int) -> tuple[list[list[str]], str]:
    shards = sorted(SHARED_SENTENCES.glob("*.txt")) if SHARED_SENTENCES.is_dir() else []
    out: list[list[str]] = []
    for shard in shards:
        for line in shard.read_text(encoding="utf-8").splitlines():
            if line.split():
                out.append(line.split())
            if len(out) == limit:
                return out, f"../{SHARED_SENTENCES.relative_to(ROOT.parent)} (first {limit})"
    if out:
        return out, f"../{SHARED_SENTENCES.relative_to(ROOT.parent)} ({len(out)})"
    rng = random.Random(0)
    words = [
        "".join(rng.choice("etaoinshrdlucmfwypvbgk") for _ in range(rng.randint(1, 9))) for _ in range(5000)
    ]
    for _ in range(limit):
        n = max(1, min(120, round(rng.lognormvariate(np.log(18), 0.6))))
        out.append([rng.choice(words) for _ in range(n)])
    return out, f"{limit} generated (log-normal lengths, median 18)"


def _requests(sentences: list[list[str]], per_request: int) -> list[tuple[bytes, int, list[list[str]]]]:
    """(JSON body, tokens, sentences) for each of len(sentences) / per_request requests."""
    out = []
    for start in range(0, len(sentences) - per_request + 1, per_request):
        chunk = sentences[start : start + per_request]
        body = json.dumps({"tokens": chunk, "layers": "elmo"}).encode()
        out.append((body, sum(map(len, chunk)), chunk))
    return out


# ---------------------------------------------------------------------------- the client
class Connection:
    """One keep-alive HTTP/1.1 connection to the server."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: bytes) -> None:
        self.reader, self.writer, self.host = reader, writer, host

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer, f"127.0.0.1:{port}".encode())

    async def post(self, body: bytes) -> tuple[int, bytes, bool]:
        """(status, body, whether the server closes the connection)."""
        head = (
            b"POST /v1/embed HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
            b"Accept: application/x-npy\r\nContent-Length: %d\r\n\r\n" % (self.host, len(body))
        )
        self.writer.write(head + body)
        await self.writer.drain()
        first = (await self.reader.readline()).split()
        if not first:  # the server closed this connection (an idle keep-alive one)
            raise ConnectionResetError("connection closed by the server")
        status = int(first[1])
        length, close = 0, False
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "connection" and "close" in value.lower():
                close = True
        return status, await self.reader.readexactly(length), close

    def close(self) -> None:
        self.writer.close()


@dataclass
class Level:
    clients: int
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    tokens: int = 0
    seconds: float = 0.0
    answers: list[tuple[bytes, list[list[str]]]] = field(default_factory=list)

    def row(self) -> dict:
        lat = np.asarray(self.latencies) * 1000 if self.latencies else np.zeros(1)
        ok = self.statuses.get(200, 0)
        return {
            "clients": self.clients,
            "requests": sum(self.statuses.values()),
            "answered": ok,
            "other_status": {k: v for k, v in self.statuses.items() if k != 200},
            "requests_per_s": ok / self.seconds,
            "tokens_per_s": self.tokens / self.seconds,
            "p50_ms": float(np.percentile(lat, 50)),
            "p95_ms": float(np.percentile(lat, 95)),
            "p99_ms": float(np.percentile(lat, 99)),
        }


async def _closed_loop(
    port: int, requests: list, clients: int, limit: int, seconds: float, keep: int
) -> Level:
    level = Level(clients)
    next_index = 0
    t0 = time.perf_counter()
    deadline = t0 + seconds

    async def client() -> None:
        nonlocal next_index
        conn = await Connection.open(port)
        try:
            while next_index < limit and time.perf_counter() < deadline:
                body, tokens, chunk = requests[next_index % len(requests)]
                next_index += 1
                start = time.perf_counter()
                status, data, close = await conn.post(body)
                level.statuses[status] = level.statuses.get(status, 0) + 1
                if status == 200:
                    level.latencies.append(time.perf_counter() - start)
                    level.tokens += tokens
                    if len(level.answers) < keep:
                        level.answers.append((data, chunk))
                if close:
                    conn.close()
                    conn = await Connection.open(port)
        finally:
            conn.close()

    await asyncio.gather(*(client() for _ in range(clients)))
    level.seconds = time.perf_counter() - t0
    return level


async def _open_loop(port: int, requests: list, rate: float, seconds: float) -> Level:
    """Requests arrive every 1/rate s whatever the answers; idle connections are reused."""
    level = Level(0)
    idle: list[Connection] = []
    tasks = []

    async def one(k: int) -> None:
        body, tokens, _ = requests[k % len(requests)]
        reused = bool(idle)
        conn = idle.pop() if idle else await Connection.open(port)
        start = time.perf_counter()
        try:
            try:
                status, _, close = await conn.post(body)
            except ConnectionResetError:
                if not reused:
                    raise
                conn.close()  # an idle connection the server had closed: once more on a new one
                conn = await Connection.open(port)
                status, _, close = await conn.post(body)
        except (ConnectionError, asyncio.IncompleteReadError):
            level.statuses[-1] = level.statuses.get(-1, 0) + 1
            conn.close()
            return
        level.statuses[status] = level.statuses.get(status, 0) + 1
        if status == 200:
            level.latencies.append(time.perf_counter() - start)
            level.tokens += tokens
        if close:
            conn.close()
        else:
            idle.append(conn)

    t0 = time.perf_counter()
    k = 0
    while time.perf_counter() - t0 < seconds:
        tasks.append(asyncio.ensure_future(one(k)))
        k += 1
        await asyncio.sleep(max(0.0, t0 + k / rate - time.perf_counter()))
    await asyncio.gather(*tasks)
    level.seconds = time.perf_counter() - t0
    level.clients = len(idle)
    for conn in idle:
        conn.close()
    return level


# ---------------------------------------------------------------------------- the server
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(a: argparse.Namespace, max_queue: int) -> tuple[subprocess.Popen, int]:
    port = _free_port()
    argv = [sys.executable, "-m", "elmo", "serve", "--port", str(port), "--threads", str(a.threads)]
    argv += ["--max-queue", str(max_queue), "--max-tokens", "100000", "--max-sentences", "4096"]
    argv += ["--max-body-bytes", str(64 << 20), "--max-batch-tokens", str(a.max_batch_tokens)]
    argv += ["--max-wait-ms", str(a.max_wait_ms), "--log-level", "warning"]
    if a.model:
        argv += ["--model", a.model]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen(argv, env=env)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"elmo serve exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2):
                return process, port
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit("elmo serve did not start within 180 s")


def _stop_server(process: subprocess.Popen) -> int:
    process.terminate()  # SIGTERM: drain, exit 0
    return process.wait(timeout=120)


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def _sample_rss(pid: int, into: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        into.append(_rss_mb(pid))
        await asyncio.sleep(0.25)


# ---------------------------------------------------------------------------- offline
def _offline(model, sentences: list[list[str]]) -> float:
    model.embed(sentences, "elmo")  # warm-up: the token cache fills, as in a serving process
    tokens = sum(map(len, sentences))
    t0 = time.perf_counter()
    model.embed(sentences, "elmo")
    return tokens / (time.perf_counter() - t0)


def _offline_in_windows(model, sentences: list[list[str]], window: int) -> float:
    """``m.embed`` on consecutive windows of ``window`` sentences, one call each: its own
    batching when it sees only the sentences of the requests in flight."""
    tokens = sum(map(len, sentences))
    t0 = time.perf_counter()
    for start in range(0, len(sentences), window):
        model.embed(sentences[start : start + window], "elmo")
    return tokens / (time.perf_counter() - t0)


def _max_difference(model, answers: list[tuple[bytes, list[list[str]]]]) -> float:
    worst = 0.0
    for data, chunk in answers:
        f = io.BytesIO(data)
        lengths, padded = np.load(f), np.load(f)
        for i, expected in enumerate(model.embed(chunk, "elmo")):
            worst = max(worst, float(np.abs(padded[i, : lengths[i]] - expected).max()))
    return worst


# ---------------------------------------------------------------------------- report
def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def _tables(result: dict) -> str:
    lines = [
        "| clients | requests answered | other statuses | requests/s | tokens/s | p50 ms | p95 ms | p99 ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["levels"]:
        other = ", ".join(f"{k}: {v}" for k, v in r["other_status"].items()) or "none"
        lines.append(
            f"| {r['clients']} | {r['answered']} | {other} | {r['requests_per_s']:.1f} | "
            f"{r['tokens_per_s']:.0f} | {r['p50_ms']:.0f} | {r['p95_ms']:.0f} | {r['p99_ms']:.0f} |"
        )
    off = result["offline_tokens_per_s"]
    lines += [
        "",
        f"Offline `m.embed` (batch 64, same sentences and threads): {off[0]:.0f} tokens/s before the "
        f"server runs, {off[1]:.0f} after. Service at 32 clients: "
        f"{result['service_vs_offline_at_32']:.0%} of the mean of the two. `m.embed` on windows of "
        f"{result['offline_in_windows'][0]} consecutive sentences (those of 32 requests, all a batch "
        f"at 32 clients can see): {result['offline_in_windows'][1]:.0f} tokens/s, "
        f"{result['offline_in_windows'][1] / ((off[0] + off[1]) / 2):.0%} of the whole.",
        f"Largest absolute difference of {result['checked_answers']} sampled answers from `m.embed`: "
        f"{result['max_abs_difference']:.2g}.",
        "",
    ]
    s = result["saturation"]
    lines += [
        f"2x saturation ({s['rate']:.1f} requests/s offered for {s['seconds']:.0f} s, --max-queue "
        f"{s['max_queue']}): {s['offered']} requests, {s['share_429']:.0%} answered 429, "
        f"{s['answered']} answered 200 (p50 {s['p50_ms']:.0f} ms, p99 {s['p99_ms']:.0f} ms), "
        f"5xx: {s['5xx']}, connection errors: {s['connection_errors']}; server RSS {s['rss_mb'][0]:.0f} MB "
        f"at start, peak {s['rss_mb'][1]:.0f} MB, {s['rss_mb'][2]:.0f} MB at the end (peak of each "
        f"tenth of the run: {', '.join(f'{x:.0f}' for x in s['rss_mb_by_tenth'])} MB); exit status "
        f"after SIGTERM: {s['exit_status']}.",
    ]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="model name or directory (default: the bundled one)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32, 128])
    p.add_argument("--sentences", type=int, default=1431, help="sentences read (default: the heldout shard)")
    p.add_argument("--sentences-per-request", type=int, default=8)
    p.add_argument("--seconds", type=float, default=15.0, help="most seconds per level")
    p.add_argument("--requests", type=int, default=2000, help="most requests per level")
    p.add_argument("--max-batch-tokens", type=int, default=16384)
    p.add_argument("--max-wait-ms", type=float, default=10.0)
    p.add_argument("--saturation-seconds", type=float, default=15.0)
    p.add_argument("--saturation-queue", type=int, default=32)
    p.add_argument("--check", type=int, default=20, help="answers compared with m.embed")
    p.add_argument("--append", action="store_true", help="append the tables to benchmarks/RESULTS.md")
    a = p.parse_args()

    import torch

    sys.path.insert(0, str(ROOT / "src"))
    import elmo

    torch.set_num_threads(a.threads)
    sentences, source = _sentences(a.sentences)
    requests = _requests(sentences, a.sentences_per_request)
    model = elmo.load(a.model, progress=False)
    result: dict = {"sentences": source, "sentences_per_request": a.sentences_per_request}
    offline_before = _offline(model, sentences)
    print(json.dumps({"offline_tokens_per_s": offline_before}), flush=True)
    in_flight = 32 * a.sentences_per_request
    result["offline_in_windows"] = [in_flight, _offline_in_windows(model, sentences, in_flight)]
    print(json.dumps({"offline_in_windows": result["offline_in_windows"]}), flush=True)

    process, port = _start_server(a, max_queue=max(256, 2 * max(a.clients)))
    try:
        # Warm the server's token cache with one pass over the sentences.
        asyncio.run(_closed_loop(port, requests, 8, len(requests), a.seconds * 4, 0))
        levels = []
        for clients in a.clients:
            level = asyncio.run(_closed_loop(port, requests, clients, a.requests, a.seconds, a.check))
            levels.append(level)
            print(json.dumps(level.row()), flush=True)
    finally:
        _stop_server(process)
    result["levels"] = [level.row() for level in levels]
    answers = [x for level in levels for x in level.answers][: a.check]
    result["checked_answers"] = len(answers)
    result["max_abs_difference"] = _max_difference(model, answers)

    best_rate = max(r["requests_per_s"] for r in result["levels"])
    process, port = _start_server(a, max_queue=a.saturation_queue)
    rss: list[float] = []

    async def saturate() -> Level:
        stop = asyncio.Event()
        sampler = asyncio.ensure_future(_sample_rss(process.pid, rss, stop))
        asyncio.get_running_loop()
        level = await _open_loop(port, requests, 2 * best_rate, a.saturation_seconds)
        stop.set()
        await sampler
        return level

    try:
        asyncio.run(_closed_loop(port, requests, 8, len(requests), a.seconds * 4, 0))  # warm-up
        sat = asyncio.run(saturate())
    finally:
        exit_status = _stop_server(process)
    offered = sum(sat.statuses.values())
    lat = np.asarray(sat.latencies or [0.0]) * 1000
    result["saturation"] = {
        "rate": 2 * best_rate,
        "seconds": a.saturation_seconds,
        "max_queue": a.saturation_queue,
        "offered": offered,
        "answered": sat.statuses.get(200, 0),
        "share_429": sat.statuses.get(429, 0) / max(1, offered),
        "5xx": sum(v for k, v in sat.statuses.items() if k >= 500),
        "connection_errors": sat.statuses.get(-1, 0),
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "rss_mb": [rss[0], max(rss), rss[-1]] if rss else [float("nan")] * 3,
        # The peak of each tenth of the run: whether memory levels off or keeps growing.
        "rss_mb_by_tenth": [max(part) for part in np.array_split(np.asarray(rss), 10) if len(part)],
        "exit_status": exit_status,
    }
    print(json.dumps(result["saturation"]), flush=True)
    offline_after = _offline(model, sentences)
    result["offline_tokens_per_s"] = [offline_before, offline_after]
    at32 = next((r for r in result["levels"] if r["clients"] == 32), result["levels"][-1])
    result["service_vs_offline_at_32"] = at32["tokens_per_s"] / ((offline_before + offline_after) / 2)
    print(json.dumps({"offline_tokens_per_s": result["offline_tokens_per_s"]}), flush=True)
    tables = _tables(result)
    print(tables)
    if a.append:
        command = "python benchmarks/bench_serve.py " + " ".join(sys.argv[1:])
        text = (
            f"\n## elmo serve under load ({time.strftime('%Y-%m-%d')})\n\n"
            f"Command: `{command.replace(' --append', '').strip()}`; machine: {_machine()}; "
            f"model: {a.model or 'the bundled default'}, fast engine float32, {a.threads} torch threads; "
            f"sentences: {source}, {a.sentences_per_request} per request; answers as application/x-npy; "
            f"the load generator runs on the same cores.\n\n{tables}\n"
        )
        with open(ROOT / "benchmarks" / "RESULTS.md", "a", encoding="utf-8") as f:
            f.write(text)


if __name__ == "__main__":
    main()

"""``elmo serve --ray``: the service as a Ray Serve deployment with two replicas on a local
Ray (2 CPUs) started by the command, seen by a real HTTP client: answers, 429 under a
flood, and SIGTERM finishing the requests in flight.

Marked ``ray``: it starts Ray (about half a minute on two cores).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi", reason="elmo serve needs the serve extra (fastapi, uvicorn)")
pytest.importorskip("ray.serve", reason="elmo serve --ray needs Ray Serve (the ray extra)")
httpx = pytest.importorskip("httpx", reason="the serve tests need httpx")

import elmo  # noqa: E402
from conftest import ROOT, SERVE_WORDS, tiny_model  # noqa: E402
from elmo import cli  # noqa: E402
from test_serve import _free_port, _from_json, _same  # noqa: E402

pytestmark = pytest.mark.ray


def _processes_mentioning(text: str) -> list[str]:
    """Command lines of the processes whose command line contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            line = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in line:
            found.append(f"{entry.name}: {line[:200]}")
    return found


def test_ray_serve_two_replicas_answer_as_the_model(tmp_path):
    port = _free_port()
    # Ray's sockets live under its temp folder: a short path, and one of this run's own,
    # so that the processes it starts can be found afterwards.
    ray_tmp = tempfile.mkdtemp(prefix="elmo-ray-", dir="/tmp")
    log = tmp_path / "serve.log"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
        "RAY_TMPDIR": ray_tmp,
    }
    env.pop("RAY_ADDRESS", None)
    argv = [sys.executable, "-m", "elmo", "serve", "--ray", "--replicas", "2", "--threads", "1"]
    argv += ["--model", str(tiny_model()), "--engine", "plain", "--port", str(port), "--max-wait-ms", "20"]
    argv += ["--max-queue", "2"]
    with open(log, "w") as out:
        process = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, f"exited with {process.returncode}: {log.read_text()}"
            assert time.monotonic() < deadline, f"/readyz not 200 within 180 s: {log.read_text()}"
            try:
                if client.get("/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.25)

        # Two replicas, each its own process with its own model: /v1/model names the pid
        # of the replica that answered.
        pids = set()
        for _ in range(200):
            answer = client.get("/v1/model")
            assert answer.status_code == 200, answer.text
            pids.add(answer.json()["pid"])
            if len(pids) == 2:
                break
        assert len(pids) == 2, pids
        assert process.pid not in pids

        torch.set_num_threads(1)
        model = elmo.load(tiny_model(), engine="plain")
        rng = random.Random(5)
        requests = [
            [rng.sample(SERVE_WORDS, rng.randint(1, 9)) for _ in range(rng.randint(1, 4))] for _ in range(16)
        ]

        def call(tokens: list[list[str]]) -> dict:
            while True:  # a queue of 2 per replica: a client that is told 429 comes back
                answer = client.post("/v1/embed", json={"tokens": tokens, "layers": "all"})
                if answer.status_code != 429:
                    break
                time.sleep(0.05)
            assert answer.status_code == 200, answer.text
            return answer.json()

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(call, requests))
        for tokens, answer in zip(requests, answers, strict=True):
            assert answer["lengths"] == [len(s) for s in tokens]
            _same(_from_json(answer), model.embed(tokens, "all"))

        # A flood: each replica's queue of 2 refuses the excess with 429 (through Serve's
        # proxy), the accepted get their own answers, nothing fails.
        flood = [[[f"flood{k}", *rng.sample(SERVE_WORDS, 3)]] for k in range(80)]
        with ThreadPoolExecutor(80) as pool:
            responses = list(
                pool.map(lambda t: client.post("/v1/embed", json={"tokens": t, "layers": "elmo"}), flood)
            )
        codes = [r.status_code for r in responses]
        assert set(codes) <= {200, 429} and 429 in codes and 200 in codes, codes
        for tokens, r in zip(flood, responses, strict=True):
            if r.status_code == 429:
                assert int(r.headers["Retry-After"]) >= 1
                assert r.json()["error"]["limit"] == "max_queue"
            else:
                _same(_from_json(r.json()), model.embed(tokens, "elmo"))

        # SIGTERM while two long requests (about 2 s of model time each) are in flight:
        # both are answered, then the command exits 0.
        long = [[[f"w{rng.randint(0, 5000)}" for _ in range(400)] for _ in range(256)] for _ in range(2)]
        with ThreadPoolExecutor(2) as pool:
            pending = [
                pool.submit(client.post, "/v1/embed", json={"tokens": t, "layers": "default"}) for t in long
            ]
            time.sleep(1.0)
            assert not any(f.done() for f in pending)
            process.send_signal(signal.SIGTERM)
            finished = [f.result(timeout=120) for f in pending]
        for tokens, r in zip(long, finished, strict=True):
            assert r.status_code == 200, r.text
            _same(_from_json(r.json()), model.embed(tokens, "default"))
        client.close()
        assert process.wait(timeout=90) == 0, log.read_text()
        deadline = time.monotonic() + 30
        while _processes_mentioning(ray_tmp) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _processes_mentioning(ray_tmp), _processes_mentioning(ray_tmp)
    finally:
        client.close()
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--replicas", "0"], "--replicas: expected an integer >= 1, found 0"),
        (["--workers", "2"], "--workers is for a single machine; with --ray give --replicas"),
    ],
)
def test_bad_ray_options_are_one_line_and_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["serve", "--ray", "--model", str(tiny_model()), *argv])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip() == f"elmo serve: error: {message}"


def test_missing_ray_serve_is_one_line_naming_the_extra(monkeypatch):
    from elmo.errors import MissingExtraError
    from elmo.serve.replicas import _import_serve

    monkeypatch.setitem(sys.modules, "ray.serve", None)
    with pytest.raises(
        MissingExtraError, match=r'ray.serve is missing\): pip install "elmo-embeddings\[ray\]"'
    ):
        _import_serve()


def test_a_bad_model_is_one_line_before_ray_starts(tmp_path, capsys):
    import ray

    assert cli.main(["serve", "--ray", "--model", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("elmo serve: ") and "missing" in err and "\n" not in err, err
    assert not ray.is_initialized()

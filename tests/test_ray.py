"""``elmo.ray``: embedding on Ray Data, on a local Ray (2 CPUs) and on a 2-node cluster
started on this machine, with a worker and the driver killed mid-run.

The tests that start Ray are marked ``ray``; they use the tiny random model and a few
short files, and take a couple of minutes together.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

import elmo
from elmo.cli import main
from elmo.corpus import CorpusJob, read_embeddings
from elmo.errors import MissingExtraError, ModelError
from test_corpus import assert_same_hdf5, elmo_embed, write_corpus

ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- without Ray
def test_import_elmo_does_not_import_ray_or_pyarrow():
    code = (
        "import sys, elmo, elmo.cli, elmo.commands, elmo.corpus; "
        "print(sorted(m for m in ('ray', 'pyarrow') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_ray_missing_is_one_line_naming_the_extra(tmp_path, monkeypatch, capsys):
    import elmo.ray

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as if not installed
    with pytest.raises(MissingExtraError, match=r'\(ray is missing\): pip install "elmo-embeddings\[ray\]"'):
        elmo.ray.embed_dataset(None)  # type: ignore[arg-type]
    (tmp_path / "a.txt").write_text("hello\n")
    assert main(["embed-corpus", str(tmp_path / "a.txt"), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.endswith('pip install "elmo-embeddings[ray]"') and "\n" not in err
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- a local Ray
try:
    import ray
except ImportError:  # the tests above run without it
    ray = None


def ray_test(test):
    """Marked ``ray``; skipped without the extra."""
    reason = 'needs the [ray] extra: pip install "elmo-embeddings[ray]"'
    return pytest.mark.ray(pytest.mark.skipif(ray is None, reason=reason)(test))


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _reference(
    corpus: Path, names: list[str], model: Path, tmp: Path, *extra: str
) -> dict[tuple[str, int], np.ndarray]:
    """``elmo embed`` of each file: (source, line) → array."""
    arrays = {}
    for name in names:
        out = elmo_embed(corpus / name, tmp / "ref.hdf5", model, *extra)
        with h5py.File(out, "r") as f:
            arrays.update({(name, int(k)): f[k][()] for k in f if k != "sentence_to_index"})
    return arrays


def _assert_equal_to(out_dir: Path, reference: dict[tuple[str, int], np.ndarray]) -> None:
    got = [(source, line, array) for source, line, array in read_embeddings(out_dir)]
    assert sorted((s, line) for s, line, _ in got) == sorted(reference)  # every line exactly once
    for source, line, array in got:
        np.testing.assert_array_equal(array, reference[source, line], err_msg=f"{source}:{line}")


@ray_test
def test_embed_dataset_adds_ragged_embedding_columns(local_ray, tiny_model_files):
    from elmo.ray import embed_dataset

    model = tiny_model_files[0].parent
    texts = ["the cat sat", "hello", "a dog ran far away , fast", "", "one two"] * 3
    ds = ray.data.from_items([{"text": t, "id": k} for k, t in enumerate(texts)])
    rows = embed_dataset(ds, model, layers="top", batch_size=4, concurrency=2, num_cpus=1).take_all()
    assert sorted(r["id"] for r in rows) == list(range(len(texts)))
    m = elmo.load(model)
    for row in rows:
        expected = m.embed([texts[row["id"]]], layers="top")[0]
        assert list(row["tokens"]) == texts[row["id"]].split()
        assert row["embeddings"].shape == expected.shape
        np.testing.assert_allclose(row["embeddings"], expected, atol=1e-5, rtol=0)
    raw = ray.data.from_items([{"sentence": "Hello, world!"}])
    [row] = embed_dataset(raw, model, layers="default", text_column="sentence", tokenized=False).take_all()
    assert list(row["tokens"]) == ["Hello", ",", "world", "!"]
    np.testing.assert_allclose(
        row["embeddings"], m.embed([["Hello", ",", "world", "!"]], "default")[0], atol=1e-5
    )


@ray_test
def test_embed_corpus_equals_elmo_embed_and_resumes(local_ray, tmp_path, tiny_model_files):
    from elmo.ray import embed_corpus

    model = tiny_model_files[0].parent
    corpus = write_corpus(tmp_path, {"a.txt": 50, "sub/b.txt": 20, "empty.txt": 0})
    job = CorpusJob([str(corpus / "**/*.txt")], tmp_path / "out", batch_size=2, shard_lines=1)
    summary = embed_corpus(job, model, engine="plain", workers=2)
    assert summary["shards"] == len(summary["computed"]) == 3 and summary["lines"] == 70
    reference = _reference(
        corpus, ["a.txt", "sub/b.txt"], model, tmp_path, "--engine", "plain", "--batch-size", "2"
    )
    _assert_equal_to(tmp_path / "out", reference)
    frame = ray.data.read_parquet(str(tmp_path / "out" / "shards")).to_pandas()
    assert len(frame) == 70 and set(frame.source) == {"a.txt", "sub/b.txt"}
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["complete"] and set(manifest["records"]) == set(manifest["shards"])

    # a re-run recomputes only what is missing
    (tmp_path / "out" / "shards" / "a.txt" / "0000000032-0000000050.parquet").unlink()
    job.resume = True
    again = embed_corpus(job, model, engine="plain", workers=2)
    assert again["computed"] == ["a.txt/0000000032-0000000050"] and again["skipped"] == 2
    after = json.loads((tmp_path / "out" / "manifest.json").read_text())["records"]
    assert {
        k: v["id"] for k, v in after.items() if k in manifest["records"] and k not in again["computed"]
    } == {k: v["id"] for k, v in manifest["records"].items() if k not in again["computed"]}
    _assert_equal_to(tmp_path / "out", reference)


@ray_test
def test_embed_corpus_hdf5_equals_elmo_embed_with_the_fast_engine(local_ray, tmp_path, tiny_model_files):
    from elmo.ray import embed_corpus

    model = tiny_model_files[0].parent
    corpus = write_corpus(tmp_path, {"a.txt": 40, "b.txt": 7})
    job = CorpusJob([str(corpus / "*.txt")], tmp_path / "out", format="hdf5", batch_size=4, shard_lines=1)
    embed_corpus(job, model, engine="fast", workers=2)
    for name in ("a.txt", "b.txt"):
        ref = elmo_embed(corpus / name, tmp_path / "ref.hdf5", model, "--batch-size", "4")
        assert_same_hdf5(tmp_path / "out" / f"{name}.hdf5", ref, exact=False)


@ray_test
def test_a_killed_worker_is_replaced_and_no_shard_is_lost_or_doubled(local_ray, tmp_path, tiny_model_files):
    import pyarrow.parquet as pq

    from elmo.ray import embed_corpus

    model = tiny_model_files[0].parent
    corpus = write_corpus(tmp_path, {"a.txt": 192, "b.txt": 128})
    job = CorpusJob([str(corpus / "*.txt")], tmp_path / "out", batch_size=1, shard_lines=16)
    total = 20
    result: dict = {}

    def run() -> None:
        try:
            result["summary"] = embed_corpus(job, model, workers=2)
        except BaseException as e:
            result["error"] = e

    thread = threading.Thread(target=run)
    thread.start()
    shards = tmp_path / "out" / "shards"
    deadline = time.monotonic() + 120
    while not list(shards.rglob("*.parquet")) and time.monotonic() < deadline:
        time.sleep(0.01)
    first = next(shards.rglob("*.parquet"))
    killed = json.loads(pq.read_schema(first).metadata[b"elmo"])["pid"]
    os.kill(killed, signal.SIGKILL)
    done_at_kill = len(list(shards.rglob("*.parquet")))
    thread.join(timeout=240)
    assert not thread.is_alive() and "error" not in result, result.get("error")
    assert done_at_kill < total, "the worker was killed after the job's end: make the job longer"
    assert result["summary"]["shards"] == total
    records = json.loads((tmp_path / "out" / "manifest.json").read_text())["records"]
    assert len(records) == total and killed in {r["pid"] for r in records.values()}
    assert len({r["pid"] for r in records.values()}) >= 3  # the replacement did some of the work
    assert len(list(shards.rglob("*.parquet"))) == total and not list(shards.rglob("*.tmp"))
    _assert_equal_to(
        tmp_path / "out",
        _reference(corpus, ["a.txt", "b.txt"], model, tmp_path, "--batch-size", "1"),
    )


@ray_test
def test_a_model_that_cannot_load_on_a_worker_fails_on_the_driver(local_ray, tmp_path, tiny_model_files):
    from elmo.ray import embed_corpus

    bad = tmp_path / "model"
    bad.mkdir()
    (bad / "options.json").write_bytes(tiny_model_files[0].read_bytes())
    (bad / "weights.hdf5").write_bytes(b"not an HDF5 file")
    (tmp_path / "a.txt").write_text("hello world\n")
    job = CorpusJob([str(tmp_path / "a.txt")], tmp_path / "out")
    result: dict = {}

    def run() -> None:
        try:
            embed_corpus(job, bad, workers=1)
        except BaseException as e:
            result["error"] = e

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=120)
    assert not thread.is_alive(), "the driver hangs on a model that cannot load"
    error = result["error"]
    assert isinstance(error, ModelError), repr(error)
    assert f"model {bad} cannot be loaded on the Ray node" in str(error) and "\n" not in str(error)


# --------------------------------------------------------------------------- 2 nodes
def _cluster_env() -> dict[str, str]:
    # The nodes listen on 127.0.0.1 only; without a token shared through ~/.ray, the same
    # authentication mode everywhere (the default differs between `ray start` and drivers);
    # unbuffered, so that `ray start --block` writes "Ray runtime started" where we wait for it.
    return dict(os.environ, PYTHONPATH=str(ROOT / "src"), RAY_AUTH_MODE="disabled", PYTHONUNBUFFERED="1")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _TwoNodes:
    """A head and a worker node on this machine, 1 CPU each, each with its own temporary
    folder and ports; stopped (their process groups) when the block ends."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="elmo-ray-"))  # short: Ray's socket paths
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.procs: list[subprocess.Popen] = []

    def _start(self, name: str, *args: str) -> None:
        ports = [
            "--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
            "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port",
        ]  # fmt: skip
        command = [str(Path(sys.executable).parent / "ray"), "start", *args, "--num-cpus", "1", "--block"]
        command += [
            "--temp-dir",
            str(self.root / name),
            "--node-ip-address",
            "127.0.0.1",
            "--disable-usage-stats",
        ]
        command += ["--min-worker-port", "0", "--max-worker-port", "0"]
        for option in ports:
            command += [option, str(_free_port())]
        env = _cluster_env()
        log = open(self.root / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        self.procs.append(proc)
        deadline = time.monotonic() + 180
        while "Ray runtime started" not in (self.root / f"{name}.log").read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"ray start {name} failed: {(self.root / f'{name}.log').read_text()[-2000:]}"
                )
            time.sleep(0.2)

    def __enter__(self) -> _TwoNodes:
        try:
            self._start("head", "--head", "--port", str(self.port), "--include-dashboard", "false")
            self._start("worker", "--address", self.address)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in reversed(self.procs):
            for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 5)):
                try:
                    os.killpg(proc.pid, sig)  # the group of the `ray start` we started
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):  # whatever of its group outlived it
                os.killpg(proc.pid, signal.SIGKILL)
        subprocess.run(["rm", "-rf", str(self.root)], check=False)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "elmo", "embed-corpus", *args]


@ray_test
def test_two_nodes_share_the_work_and_a_killed_driver_resumes(tmp_path, tiny_model_files):
    if ray.is_initialized():
        ray.shutdown()
    model = tiny_model_files[0].parent
    corpus = write_corpus(tmp_path, {"a.txt": 160, "b.txt": 160})
    env = _cluster_env()
    common = ["-m", str(model), "--batch-size", "1", "--shard-lines", "16"]
    with _TwoNodes() as cluster:
        # both nodes take part, and the output is elmo embed's
        out = tmp_path / "two"
        args = _cli(str(corpus / "b.txt"), str(out), "--ray", cluster.address, "--workers", "2", *common)
        subprocess.run(args, env=env, check=True, timeout=240)
        records = json.loads((out / "manifest.json").read_text())["records"]
        assert len({r["node"] for r in records.values()}) == 2, records
        reference = _reference(corpus, ["a.txt", "b.txt"], model, tmp_path, "--batch-size", "1")
        _assert_equal_to(out, {k: v for k, v in reference.items() if k[0] == "b.txt"})

        # the driver killed mid-run; --resume finishes without redoing the finished shards
        out = tmp_path / "killed"
        args = _cli(str(corpus / "*.txt"), str(out), "--ray", cluster.address, "--workers", "2", *common)
        driver = subprocess.Popen(args, env=env, stderr=subprocess.DEVNULL)
        shards = out / "shards"
        deadline = time.monotonic() + 120
        while len(list(shards.rglob("*.parquet"))) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        finished: dict[str, float] = {}
        while True:  # until the killed job's workers are gone
            time.sleep(2)
            now = {str(p): p.stat().st_mtime_ns for p in shards.rglob("*.parquet")}
            if now == finished:
                break
            finished = now
        assert 3 <= len(finished) < 20, "the driver was killed after the job's end: make the job longer"
        run = subprocess.run([*args, "--resume"], env=env, capture_output=True, text=True, timeout=240)
        assert run.returncode == 0, run.stderr[-2000:]
        assert f"({20 - len(finished)} computed, {len(finished)} already complete)" in run.stderr
        assert all(Path(p).stat().st_mtime_ns == t for p, t in finished.items())
        _assert_equal_to(out, reference)

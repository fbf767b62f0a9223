"""The files of ``elmo embed-corpus`` without Ray: the plan, the shards, the reader, and the
checks of the inputs and the output folder. The shards are computed in this process here;
tests/test_ray.py runs them on Ray."""

from __future__ import annotations

import json
import random
from pathlib import Path

import h5py
import numpy as np
import pytest

import elmo
from elmo.cli import main
from elmo.corpus import CorpusJob, compute_shard, finish_corpus, plan_corpus, read_embeddings
from elmo.errors import CorpusError

pytest.importorskip("pyarrow")

_WORDS = "the cat sat on mat a dog ran far away , . hello world é 東京".split()


def write_corpus(root: Path, sizes: dict[str, int], seed: int = 0) -> Path:
    """Text files of random sentences (some blank, some repeated) under ``root/corpus``."""
    rng = random.Random(seed)
    corpus = root / "corpus"
    for name, n in sizes.items():
        path = corpus / name
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(0, 9))) for _ in range(n)]
        if n > 3:
            lines[3] = lines[1]  # a repeated sentence: sentence_to_index keeps the later line
        path.write_text(
            "".join(f"  {line}\r\n" if k % 7 == 5 else f"{line}\n" for k, line in enumerate(lines))
        )
    return corpus


def elmo_embed(path: Path, out: Path, model: Path, *extra: str) -> Path:
    """``elmo embed`` of one file (the single-process reference)."""
    assert main(["embed", str(path), str(out), "-m", str(model), "-q", "--overwrite", *extra]) == 0
    return out


def assert_same_hdf5(a: Path, b: Path, exact: bool = True) -> None:
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        assert sorted(fa) == sorted(fb)
        for key in fa:
            if key == "sentence_to_index":
                assert json.loads(fa[key][0]) == json.loads(fb[key][0])
            elif exact:
                np.testing.assert_array_equal(fa[key][()], fb[key][()], err_msg=key)
            else:
                np.testing.assert_allclose(fa[key][()], fb[key][()], atol=1e-5, rtol=0, err_msg=key)
            assert fa[key].dtype == fb[key].dtype


def run_in_process(job: CorpusJob, model: Path, engine: str = "plain") -> dict:
    """The shards of ``job`` computed one after another in this process."""
    module = elmo.load(model, engine=engine)
    plan = plan_corpus(job, {"source": str(model)})
    computed = {}
    for shard in plan.todo:
        done, _ = compute_shard(module, job, shard, {"pid": 0, "id": shard.name})
        if done:
            computed[shard.name] = {"pid": 0, "id": shard.name}
    finish_corpus(plan, computed)
    return computed


def test_shards_are_whole_windows_and_named_from_the_input(tmp_path, tiny_model_files):
    corpus = write_corpus(tmp_path, {"a.txt": 45, "sub/b.txt": 16, "empty.txt": 0})
    job = CorpusJob([str(corpus / "**" / "*.txt")], tmp_path / "out", batch_size=2, shard_lines=20)
    assert job.shard_size == 32  # rounded up to whole windows of 16 batches of 2
    plan = plan_corpus(job, {"source": "tiny"})
    assert [s.name for s in plan.shards] == [
        "a.txt/0000000000-0000000032",
        "a.txt/0000000032-0000000045",
        "sub/b.txt/0000000000-0000000016",
    ]
    assert [(f.source, f.lines) for f in plan.files] == [("a.txt", 45), ("empty.txt", 0), ("sub/b.txt", 16)]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["complete"] is False and len(manifest["shards"]) == 3


@pytest.mark.parametrize("layers", ["all", "top"])
def test_parquet_shards_equal_elmo_embed_bit_for_bit(tmp_path, tiny_model_files, layers):
    model = tiny_model_files[0].parent
    corpus = write_corpus(tmp_path, {"a.txt": 40, "b.txt": 9})
    job = CorpusJob([str(corpus / "*.txt")], tmp_path / "out", layers=layers, batch_size=2, shard_lines=1)
    run_in_process(job, model)
    got = list(read_embeddings(tmp_path / "out"))
    assert [(s, line) for s, line, _ in got] == [("a.txt", k) for k in range(40)] + [
        ("b.txt", k) for k in range(9)
    ]
    for name in ("a.txt", "b.txt"):
        ref = elmo_embed(
            corpus / name,
            tmp_path / f"{name}.hdf5",
            model,
            "--engine",
            "plain",
            "--layers",
            layers,
            "--batch-size",
            "2",
        )
        with h5py.File(ref, "r") as f:
            for source, line, array in got:
                if source == name:
                    assert array.dtype == np.float32
                    np.testing.assert_array_equal(array, f[str(line)][()])


def test_hdf5_output_equals_elmo_embed(tmp_path, tiny_model_files):
    model = tiny_model_files[0].parent
    corpus = write_corpus(tmp_path, {"a.txt": 40, "sub/b.txt": 9, "empty.txt": 0})
    job = CorpusJob(
        [str(corpus / "**/*.txt")],
        tmp_path / "out",
        format="hdf5",
        store_dtype="float16",
        batch_size=2,
        shard_lines=1,
    )
    run_in_process(job, model)
    for name in ("a.txt", "sub/b.txt", "empty.txt"):
        ref = elmo_embed(
            corpus / name,
            tmp_path / "ref.hdf5",
            model,
            "--engine",
            "plain",
            "--batch-size",
            "2",
            "--dtype",
            "float16",
        )
        assert_same_hdf5(tmp_path / "out" / f"{name}.hdf5", ref)
    assert not (tmp_path / "out" / ".parts").exists()
    assert sum(1 for _ in read_embeddings(tmp_path / "out")) == 49


def test_shards_load_with_pyarrow_and_pandas(tmp_path, tiny_model_files):
    import pyarrow.parquet as pq

    model = tiny_model_files[0].parent
    corpus = write_corpus(tmp_path, {"a.txt": 5})
    job = CorpusJob([str(corpus / "a.txt")], tmp_path / "out", layers="top", store_dtype="float16")
    run_in_process(job, model)
    [(_, _, first), *_] = read_embeddings(tmp_path / "out")
    frame = pq.read_table(tmp_path / "out" / "shards" / "a.txt").to_pandas()
    assert list(frame.columns) == ["source", "line", "tokens", "embedding", "shape"]
    row = frame.iloc[0]
    assert list(row.tokens) == (corpus / "a.txt").read_text().splitlines()[0].split()
    array = np.asarray(row.embedding).reshape(row["shape"])
    assert array.dtype == np.float16 and array.shape == first.shape == (len(row.tokens), first.shape[1])
    np.testing.assert_array_equal(array, first)


def test_resume_skips_finished_shards_and_rejects_other_arguments(tmp_path, tiny_model_files):
    model = tiny_model_files[0].parent
    corpus = write_corpus(tmp_path, {"a.txt": 40})
    job = CorpusJob([str(corpus / "a.txt")], tmp_path / "out", batch_size=1, shard_lines=16)
    assert len(run_in_process(job, model)) == 3
    removed = tmp_path / "out" / "shards" / "a.txt" / "0000000016-0000000032.parquet"
    removed.unlink()
    (removed.parent / ".leftover.abc.tmp").write_bytes(b"half a shard")
    with pytest.raises(CorpusError, match="holds an earlier run; pass --resume"):
        run_in_process(job, model)
    job.resume = True
    assert list(run_in_process(job, model)) == ["a.txt/0000000016-0000000032"]
    assert not (removed.parent / ".leftover.abc.tmp").exists()
    job.layers = "top"
    with pytest.raises(CorpusError, match='its layers was "all", now "top"'):
        run_in_process(job, model)


def test_invalid_utf8_is_named_with_its_line(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "bad.txt").write_bytes(b"fine\nalso fine\nnot \xff fine\n")
    with pytest.raises(
        CorpusError, match=r"bad\.txt: line 3: not valid UTF-8 \(invalid start byte at byte 4"
    ):
        plan_corpus(CorpusJob([str(tmp_path / "c" / "*.txt")], tmp_path / "out"), {})
    assert not (tmp_path / "out").exists()


def test_unreadable_file_is_named(tmp_path, monkeypatch):
    import elmo.corpus

    (tmp_path / "a.txt").write_text("hello\n")

    def refuse(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(elmo.corpus, "open", refuse, raising=False)
    with pytest.raises(CorpusError, match=r"a\.txt: cannot read: Permission denied"):
        plan_corpus(CorpusJob([str(tmp_path / "a.txt")], tmp_path / "out"), {})


def test_empty_glob_names_the_pattern(tmp_path):
    (tmp_path / "folder.txt").mkdir()
    with pytest.raises(CorpusError, match=r"nothing/\*\.txt: the pattern matches no file"):
        plan_corpus(CorpusJob([str(tmp_path / "nothing" / "*.txt")], tmp_path / "out"), {})
    with pytest.raises(CorpusError, match="matches only folders"):
        plan_corpus(CorpusJob([str(tmp_path / "*.txt")], tmp_path / "out"), {})


def test_an_output_folder_with_other_files_is_refused(tmp_path):
    (tmp_path / "a.txt").write_text("hello\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(
        CorpusError, match=r"holds files that are not an elmo embed-corpus output \(e\.g\. thesis\.tex\)"
    ):
        plan_corpus(CorpusJob([str(tmp_path / "a.txt")], out, resume=True), {})
    assert sorted(p.name for p in out.iterdir()) == ["thesis.tex"]


def test_read_embeddings_refuses_an_unfinished_run(tmp_path):
    (tmp_path / "a.txt").write_text("hello\n")
    plan_corpus(CorpusJob([str(tmp_path / "a.txt")], tmp_path / "out"), {})
    with pytest.raises(CorpusError, match="not complete; finish it with elmo embed-corpus --resume"):
        next(read_embeddings(tmp_path / "out"))
    with pytest.raises(CorpusError, match=r"no manifest\.json"):
        next(elmo.read_embeddings(tmp_path))

"""Whole training runs on a tiny model: exact resume, kill during save, torchrun, export."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import elmo
from conftest import ROOT, SHARED, needs_shared, shared_path
from elmo.chars import batch_to_char_ids
from elmo.errors import CheckpointError, TrainError
from elmo.train.checkpoint import load_checkpoint
from elmo.train.evaluate import perplexity
from elmo.train.models import export_model, load_language_model
from elmo.train.trainer import RunSettings, Trainer
from elmo.train.vocab import Vocabulary, build_vocab

WIKI = SHARED / "data" / "wikitext-2" / "sentences" / "train" / "shard-00000.txt"

TINY = {
    "lstm": {
        "dim": 32,
        "projection_dim": 16,
        "n_layers": 2,
        "cell_clip": 3,
        "proj_clip": 3,
        "use_skip_connections": True,
    },
    "char_cnn": {
        "activation": "relu",
        "filters": [[1, 8], [2, 8], [3, 16]],
        "n_highway": 1,
        "embedding": {"dim": 8},
        "max_characters_per_token": 20,
        "n_characters": 261,
    },
    "batch_size": 4,
    "unroll_steps": 6,
    "n_epochs": 1,
    "n_train_tokens": 10_000,
    "all_clip_norm_val": 10.0,
    "dropout": 0.1,
    "n_negative_samples_batch": 32,
    "learning_rate": 0.2,
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    """Four shards of WikiText-2 sentences, a held-out file and their vocabulary."""
    root = tmp_path_factory.mktemp("corpus")
    text = shared_path(WIKI).read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line.strip()][:1200]
    for k in range(4):
        (root / f"train-{k}.txt").write_text("\n".join(lines[k * 250 : (k + 1) * 250]) + "\n")
    (root / "heldout.txt").write_text("\n".join(lines[1000:1100]) + "\n")
    vocab = root / "vocab.txt"
    words = build_vocab(sorted(root.glob("train-*.txt")), min_count=2)
    vocab.write_text("\n".join(words) + "\n")
    return {"root": root, "vocab": vocab, "train": str(root / "train-*.txt"), "heldout": root / "heldout.txt"}


def _options(corpus, **changes) -> dict:
    options = json.loads(json.dumps(TINY))
    options["n_tokens_vocab"] = Vocabulary.from_file(corpus["vocab"]).size
    options.update(changes)
    return options


def _settings(corpus, **kw) -> RunSettings:
    base = dict(train=[corpus["train"]], seed=3, progress=False, save_every_steps=0, save_every_minutes=0)
    base.update(kw)
    return RunSettings(**base)


def test_resume_equals_uninterrupted(corpus, tmp_path):
    options = _options(corpus)
    full = Trainer(tmp_path / "full", options, corpus["vocab"], _settings(corpus, max_steps=10)).run()
    Trainer(tmp_path / "cut", options, corpus["vocab"], _settings(corpus, max_steps=4)).run()
    resumed = Trainer(tmp_path / "cut", settings=_settings(corpus, max_steps=10), resume=True).run()
    assert [r["step"] for r in resumed] == list(range(5, 11))
    for a, b in zip(full[4:], resumed):
        assert (a["loss_forward"], a["loss_backward"]) == (b["loss_forward"], b["loss_backward"]), a["step"]
    one = load_checkpoint(tmp_path / "full" / "checkpoint.pt")
    two = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    for name, value in one.model.items():
        assert torch.equal(value, two.model[name]), name


def test_heldout_perplexity_falls(corpus, tmp_path):
    options = _options(corpus, dropout=0.0)
    vocab = Vocabulary.from_file(corpus["vocab"])
    heldout = [line.split() for line in corpus["heldout"].read_text().splitlines()]
    trainer = Trainer(tmp_path / "run", options, corpus["vocab"], _settings(corpus, max_steps=60))
    before = perplexity(trainer.model, vocab, heldout).combined
    trainer.run()
    after = perplexity(trainer.model, vocab, heldout).combined
    assert after < 0.8 * before, (before, after)


def test_new_run_refuses_existing_run_and_resume_needs_one(corpus, tmp_path):
    options = _options(corpus)
    Trainer(tmp_path / "run", options, corpus["vocab"], _settings(corpus, max_steps=1)).run()
    with pytest.raises(TrainError, match="--resume"):
        Trainer(tmp_path / "run", options, corpus["vocab"], _settings(corpus, max_steps=1))
    with pytest.raises(TrainError, match="nothing to resume"):
        Trainer(tmp_path / "other", settings=_settings(corpus), resume=True)
    changed = _options(corpus, unroll_steps=7)
    with pytest.raises(TrainError, match="unroll_steps"):
        Trainer(tmp_path / "run", changed, settings=_settings(corpus), resume=True)


def test_vocab_size_must_match_options(corpus, tmp_path):
    options = _options(corpus, n_tokens_vocab=12)
    with pytest.raises(TrainError, match="n_tokens_vocab is 12"):
        Trainer(tmp_path / "run", options, corpus["vocab"], _settings(corpus, max_steps=1))


def test_export_loads_and_matches_training_model(corpus, tmp_path):
    options = _options(corpus)
    trainer = Trainer(tmp_path / "run", options, corpus["vocab"], _settings(corpus, max_steps=3))
    trainer.run()
    out = export_model(tmp_path / "run", tmp_path / "export")
    assert sorted(p.name for p in out.iterdir()) == [
        ".elmo-export",
        "lm_head.hdf5",
        "options.json",
        "training_options.json",
        "vocab.txt",
        "weights.hdf5",
    ]
    released = json.loads((out / "options.json").read_text())
    assert set(released) == {"lstm", "char_cnn"} and released["char_cnn"]["n_characters"] == 262
    module = elmo.load(out)
    sentences = [["The", "cat", "sat", "."], ["A", "longer", "sentence", "with", "more", "words", "."]]
    got = module.embed_tokens(sentences)
    trainer.model.eval()
    ref = trainer.model.encoder(batch_to_char_ids(sentences, 20))
    assert torch.allclose(got["lstm_outputs2"], ref.layers[2], atol=1e-6)
    assert torch.allclose(got["word_emb"], ref.layers[0], atol=1e-6)
    # The run directory itself loads as a model: the same weights as its export.
    from_run = elmo.load(tmp_path / "run", engine="plain").embed_tokens(sentences)
    assert torch.equal(
        from_run["lstm_outputs2"], elmo.load(out, engine="plain").embed_tokens(sentences)["lstm_outputs2"]
    )
    # The head survives too: perplexity from the export equals the run's.
    vocab = Vocabulary.from_file(corpus["vocab"])
    heldout = [line.split() for line in corpus["heldout"].read_text().splitlines()[:20]]
    a = perplexity(load_language_model(out).model, vocab, heldout).combined
    b = perplexity(trainer.model, vocab, heldout).combined
    assert a == pytest.approx(b, rel=1e-6)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "elmo", *args]


def test_kill_during_save_leaves_a_loadable_checkpoint(corpus, tmp_path):
    options = tmp_path / "options.json"
    options.write_text(json.dumps(_options(corpus)))
    run = tmp_path / "run"
    cmd = _cli(
        "train",
        "--options",
        str(options),
        "--vocab",
        str(corpus["vocab"]),
        "--train",
        corpus["train"],
        "--out",
        str(run),
        "--save-every",
        "1",
        "--max-steps",
        "100000",
        "--quiet",
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    kills = 0
    for delay in (4.0, 5.5, 7.0, 8.5):
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        if (run / "checkpoint.pt").exists():
            ckpt = load_checkpoint(run / "checkpoint.pt")  # never half-written
            assert ckpt.step >= 1
            cmd = [c for c in cmd if c not in ("--options", str(options), "--vocab", str(corpus["vocab"]))]
            if "--resume" not in cmd:
                cmd.append("--resume")
        assert not list(run.glob(".checkpoint.pt.tmp*")) or True  # a stray temp file is harmless
    assert kills == 4 and (run / "checkpoint.pt").exists()


def test_corrupt_checkpoint_is_reported(corpus, tmp_path):
    options = _options(corpus)
    Trainer(tmp_path / "run", options, corpus["vocab"], _settings(corpus, max_steps=1)).run()
    path = tmp_path / "run" / "checkpoint.pt"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    result = subprocess.run(
        _cli("train", "--out", str(tmp_path / "run"), "--resume", "--quiet", "--max-steps", "2"),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert "checkpoint.pt" in result.stderr and "corrupt" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_torchrun_two_processes_equal_one_process_with_the_same_global_batch(corpus, tmp_path):
    """gloo on CPU: 2 ranks × 4 rows vs 1 process × 8 rows, 2 data partitions either way.

    Full softmax and no dropout make both runs deterministic; they differ only in the
    order gradients are summed (all-reduce), so losses agree to float32 rounding.
    """
    steps = 6
    per_rank = _options(corpus, dropout=0.0, sample_softmax=False)
    single = _options(corpus, dropout=0.0, sample_softmax=False, batch_size=8)
    (tmp_path / "per_rank.json").write_text(json.dumps(per_rank))
    (tmp_path / "single.json").write_text(json.dumps(single))
    common = [
        "--vocab",
        str(corpus["vocab"]),
        "--train",
        corpus["train"],
        "--max-steps",
        str(steps),
        "--log-every",
        "1",
        "--quiet",
        "--seed",
        "5",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29533",
            "-m",
            "elmo",
            "train",
            "--options",
            str(tmp_path / "per_rank.json"),
            "--out",
            str(tmp_path / "ddp"),
            *common,
        ],
        check=True,
        env=env,
        cwd=ROOT,
        capture_output=True,
    )
    subprocess.run(
        _cli(
            "train",
            "--options",
            str(tmp_path / "single.json"),
            "--out",
            str(tmp_path / "one"),
            "--partitions",
            "2",
            *common,
        ),
        check=True,
        env=env,
        cwd=ROOT,
        capture_output=True,
    )

    def losses(run: Path) -> np.ndarray:
        import csv

        with (run / "log.csv").open() as f:
            return np.array(
                [[float(r["loss_forward"]), float(r["loss_backward"])] for r in csv.DictReader(f)]
            )

    a, b = losses(tmp_path / "ddp"), losses(tmp_path / "one")
    assert a.shape == b.shape == (steps, 2)
    np.testing.assert_allclose(a, b, rtol=1e-5)
    assert load_checkpoint(tmp_path / "ddp" / "checkpoint.pt").meta["world_size"] == 2


FIXTURE_RUN = SHARED / "fixtures" / "bilm-tf" / "generated" / "run_small_fullsoftmax_nodropout"


@needs_shared(FIXTURE_RUN)
def test_fine_tune_from_bilm_tf_checkpoint_reproduces_its_restart(tmp_path):
    """bilm-tf's restart: weights and Adagrad state from model.ckpt-30, data from the start."""
    options = json.loads((FIXTURE_RUN / "options.json").read_text())
    train_file = SHARED / "fixtures" / "bilm-tf" / "train" / "data.txt"
    settings = RunSettings(
        train=[str(train_file)],
        max_steps=6,
        shuffle=False,
        progress=False,
        save_every_steps=0,
        save_every_minutes=0,
        init_from=str(FIXTURE_RUN / "checkpoint"),
    )
    vocab = SHARED / "fixtures" / "bilm-tf" / "train" / "vocab.txt"
    rows = Trainer(tmp_path / "run", options, vocab, settings).run()
    ref = json.loads((FIXTURE_RUN / "restart" / "restart.json").read_text())["restart"]["steps"]
    assert [r["loss"] for r in rows] == pytest.approx([r["total_loss"] for r in ref], rel=1e-4)


def test_fine_tune_from_export_keeps_or_resets_the_softmax(corpus, tmp_path):
    options = _options(corpus)
    source = Trainer(tmp_path / "src", options, corpus["vocab"], _settings(corpus, max_steps=2))
    source.run()
    export_model(tmp_path / "src", tmp_path / "export")
    src = dict(source.model.named_parameters())

    same = Trainer(
        tmp_path / "same",
        options,
        corpus["vocab"],
        _settings(corpus, max_steps=1, init_from=str(tmp_path / "export")),
    )
    for name, p in same.model.named_parameters():
        assert torch.equal(p.detach(), src[name].detach()), name

    words = Vocabulary.from_file(corpus["vocab"]).words
    new_vocab = tmp_path / "new_vocab.txt"
    new_vocab.write_text("\n".join([*words[:3], "zebra", *words[3:50]]) + "\n")
    changed = _options(corpus, n_tokens_vocab=51)
    other = Trainer(
        tmp_path / "other",
        changed,
        new_vocab,
        _settings(corpus, max_steps=1, init_from=str(tmp_path / "export")),
    )
    enc = dict(other.model.encoder.named_parameters())
    for name, p in source.model.encoder.named_parameters():
        assert torch.equal(p.detach(), enc[name].detach()), name
    assert other.model.softmax.weight.shape == (51, 16)
    other.run()  # trains with the new head

    arch = _options(corpus)
    arch["lstm"] = dict(arch["lstm"], dim=48)
    with pytest.raises(Exception, match="architecture differs"):
        Trainer(
            tmp_path / "bad",
            arch,
            corpus["vocab"],
            _settings(corpus, max_steps=1, init_from=str(tmp_path / "export")),
        )


def test_cli_train_errors(corpus, tmp_path):

    options = tmp_path / "options.json"
    options.write_text(json.dumps(_options(corpus)))
    base = ["train", "--options", str(options), "--vocab", str(corpus["vocab"]), "--quiet"]
    cases = [
        (["--train", str(tmp_path / "none-*.txt"), "--out", str(tmp_path / "a")], "none-*.txt"),
        (["--out", str(tmp_path / "b")], "--train"),
    ]
    bad_vocab = tmp_path / "bad_vocab.txt"
    bad_vocab.write_text("<S>\nthe\n")
    cases.append(
        (["--train", corpus["train"], "--out", str(tmp_path / "c"), "--vocab", str(bad_vocab)], "</S>")
    )
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    cases.append((["--train", str(empty), "--out", str(tmp_path / "d")], "empty"))
    for extra, expected in cases:
        proc = subprocess.run(_cli(*base, *extra), capture_output=True, text=True, cwd=ROOT)
        assert proc.returncode == 1, (extra, proc.stderr)
        assert expected in proc.stderr, (extra, proc.stderr)
        assert "Traceback" not in proc.stderr
        # One error line (possibly after informational log lines).
        assert proc.stderr.strip().splitlines()[-1].startswith("elmo train: error: "), proc.stderr


# ---------------------------------------------------------------------- integrity and safety
@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, Path]:
    """A made-up corpus (no ../shared needed): two shards, their vocabulary, options."""
    import random

    root = tmp_path_factory.mktemp("made")
    rng = random.Random(0)
    words = [f"w{i}" for i in range(40)]
    for k in range(2):
        lines = [" ".join(rng.choices(words, k=rng.randint(3, 12))) for _ in range(200)]
        (root / f"train-{k}.txt").write_text("\n".join(lines) + "\n")
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(build_vocab(sorted(root.glob("train-*.txt")))) + "\n")
    options = json.loads(json.dumps(TINY))
    options["n_tokens_vocab"] = Vocabulary.from_file(vocab).size
    return {"root": root, "vocab": vocab, "train": str(root / "train-*.txt"), "options": options}


def _made_settings(made, **kw) -> RunSettings:
    base = dict(train=[made["train"]], seed=1, progress=False, save_every_steps=0, save_every_minutes=0)
    base.update(kw)
    return RunSettings(**base)


def _made_run(made, run: Path, steps: int = 2, **changes) -> Path:
    options = dict(made["options"], **changes)
    Trainer(run, options, made["vocab"], _made_settings(made, max_steps=steps)).run()
    return run


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("learning_rate", float("nan"), "'learning_rate' must be a finite number, found nan"),
        ("learning_rate", float("inf"), "'learning_rate' must be a finite number, found inf"),
        ("learning_rate", 0.0, "'learning_rate' must be > 0, found 0.0"),
        ("all_clip_norm_val", float("nan"), "'all_clip_norm_val' must be a finite number, found nan"),
        ("all_clip_norm_val", -1.0, "'all_clip_norm_val' must be > 0, found -1.0"),
        ("dropout", 1.5, "'dropout' must be >= 0 and <= 1, found 1.5"),
        ("dropout", float("-inf"), "'dropout' must be a finite number, found -inf"),
        ("lstm.cell_clip", float("nan"), "'lstm.cell_clip' must be a finite number, found nan"),
        ("lstm.proj_clip", float("inf"), "'lstm.proj_clip' must be a finite number, found inf"),
        ("n_epochs", float("nan"), "'n_epochs' must be a finite number, found nan"),
    ],
)
def test_non_finite_or_out_of_range_options_are_refused_before_any_work(made, tmp_path, name, value, message):
    options = json.loads(json.dumps(made["options"]))
    section, _, key = name.rpartition(".")
    (options[section] if section else options)[key] = value
    with pytest.raises(TrainError, match=re.escape(f"options: {message}")):
        Trainer(tmp_path / "run", options, made["vocab"], _made_settings(made, max_steps=1))
    assert not (tmp_path / "run").exists()  # nothing was started


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"batch_size": None}, "'batch_size' must be a positive integer, found null"),
        ({"unroll_steps": 0}, "'unroll_steps' must be a positive integer, found 0"),
        ({"n_tokens_vocab": 7}, "n_tokens_vocab is 7 but "),
        ({"n_negative_samples_batch": 10_000}, "n_negative_samples_batch must be an integer from 1 to the "),
        ({"bidirectional": False}, "bidirectional is false"),
    ],
)
def test_a_bad_option_names_the_options_file(made, tmp_path, change, message):
    path = tmp_path / "my-options.json"
    path.write_text(json.dumps({**made["options"], **change}))
    with pytest.raises(TrainError, match="^" + re.escape(f"{path}: {message}")):
        Trainer(tmp_path / "run", path, made["vocab"], _made_settings(made, max_steps=1))
    assert not (tmp_path / "run").exists()


def test_too_many_negative_samples_are_refused_before_any_work(made, tmp_path):
    options = dict(made["options"], n_negative_samples_batch=10_000)
    with pytest.raises(TrainError, match=r"^options: n_negative_samples_batch must be an integer from 1 to"):
        Trainer(tmp_path / "run", options, made["vocab"], _made_settings(made, max_steps=1))
    # With the full softmax the option is not used.
    options["sample_softmax"] = False
    Trainer(tmp_path / "run", options, made["vocab"], _made_settings(made, max_steps=1)).run()


def test_cli_refuses_nan_options(made, tmp_path):
    options = tmp_path / "options.json"
    options.write_text(json.dumps(dict(made["options"], learning_rate=float("nan"))))  # NaN in JSON
    proc = subprocess.run(
        _cli(
            "train",
            "--options",
            str(options),
            "--vocab",
            str(made["vocab"]),
            "--train",
            made["train"],
            "--out",
            str(tmp_path / "run"),
            "--quiet",
        ),
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"elmo train: error: {options}: 'learning_rate' must be a finite number, found nan"
    ]


def test_non_finite_loss_stops_without_overwriting_the_checkpoint(made, tmp_path):
    run = _made_run(made, tmp_path / "run", steps=2)
    before = (run / "checkpoint.pt").read_bytes()
    trainer = Trainer(run, settings=_made_settings(made, max_steps=6, save_every_steps=1), resume=True)
    with torch.no_grad():
        trainer.model.softmax.bias[0] = float("nan")  # as a diverging run would end up
    with pytest.raises(
        TrainError, match=r"step 3: the loss is nan .*stopped without saving: the last checkpoint"
    ):
        trainer.run()
    assert (run / "checkpoint.pt").read_bytes() == before
    assert load_checkpoint(run / "checkpoint.pt").step == 2
    # The good checkpoint resumes (the run directory is not left locked).
    rows = Trainer(run, settings=_made_settings(made, max_steps=3), resume=True).run()
    assert [r["step"] for r in rows] == [3] and math.isfinite(rows[0]["loss"])


def test_damaged_checkpoint_is_refused_on_resume(made, tmp_path):
    run = _made_run(made, tmp_path / "run", steps=1)
    path = run / "checkpoint.pt"
    ckpt = load_checkpoint(path)
    data = bytearray(path.read_bytes())
    raw = ckpt.model["softmax.weight"].numpy().tobytes()
    data[bytes(data).index(raw[:64]) + 7] ^= 0x04  # one bit of one weight
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"checkpoint.pt: the checkpoint is corrupt"):
        Trainer(run, settings=_made_settings(made, max_steps=2), resume=True)
    proc = subprocess.run(
        _cli("train", "--out", str(run), "--resume", "--quiet", "--max-steps", "2"),
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"elmo train: error: {path}: the checkpoint is corrupt")


def test_resume_refuses_another_vocabulary_or_options(made, tmp_path):
    run = _made_run(made, tmp_path / "run", steps=1)
    # --options that differ in any option, not only the architecture's
    changed = dict(made["options"], learning_rate=0.5)
    with pytest.raises(
        TrainError, match=r"option 'learning_rate' is 0.5 but the checkpoint .* trained with 0.2"
    ):
        Trainer(run, changed, settings=_made_settings(made, max_steps=2), resume=True)
    # the same options are fine
    Trainer(run, made["options"], settings=_made_settings(made, max_steps=1), resume=True).run()
    # the run's options.json edited in place
    saved = (run / "options.json").read_text()
    (run / "options.json").write_text(json.dumps(dict(made["options"], dropout=0.3)))
    with pytest.raises(
        TrainError, match=r"options.json: option 'dropout' differs from the options the checkpoint"
    ):
        Trainer(run, settings=_made_settings(made, max_steps=2), resume=True)
    (run / "options.json").write_text(saved)
    # the run's vocab.txt replaced by another of the same size
    words = Vocabulary.from_file(run / "vocab.txt").words
    (run / "vocab.txt").write_text("\n".join([*words[:3], *reversed(words[3:])]) + "\n")
    with pytest.raises(TrainError, match=r"vocab.txt: differs from the vocabulary the checkpoint .*\(SHA"):
        Trainer(run, settings=_made_settings(made, max_steps=2), resume=True)


def test_run_directory_is_locked(made, tmp_path):
    run = _made_run(made, tmp_path / "run", steps=1)
    first = Trainer(run, settings=_made_settings(made, max_steps=2), resume=True)
    assert (run / ".lock").read_text() == f"pid {os.getpid()}\n"
    with pytest.raises(
        TrainError, match=rf"another elmo train is running in this directory \(pid {os.getpid()}\)"
    ):
        Trainer(run, settings=_made_settings(made, max_steps=2), resume=True)
    with pytest.raises(TrainError, match="another elmo train is running"):
        Trainer(run, made["options"], made["vocab"], _made_settings(made, max_steps=2))
    t0 = time.monotonic()
    proc = subprocess.run(
        _cli("train", "--out", str(run), "--resume", "--quiet", "--max-steps", "2"),
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 1 and time.monotonic() - t0 < 60
    assert proc.stderr.strip().splitlines() == [
        f"elmo train: error: {run}: another elmo train is running in this directory (pid {os.getpid()}); "
        "wait for it to end or choose another directory"
    ]
    first.run()  # the first run is unharmed, and lets go when it ends
    Trainer(run, settings=_made_settings(made, max_steps=3), resume=True).run()


def test_run_files_are_written_atomically(made, tmp_path, monkeypatch):
    from conftest import full_disk
    from elmo import atomic

    options_text = json.dumps(made["options"], indent=2) + "\n"
    full_disk(monkeypatch, atomic, len(options_text) + 10)  # options.json fits, run.json does not
    run = tmp_path / "run"
    with pytest.raises(TrainError, match=r"cannot write the run's files in .*\[Errno 28\] No space left"):
        Trainer(run, made["options"], made["vocab"], _made_settings(made, max_steps=1))
    assert sorted(p.name for p in run.iterdir()) == ["options.json", "vocab.txt"]  # no run.json, no temporary
    assert (run / "options.json").read_text() == options_text
    monkeypatch.undo()
    assert [
        r["step"]
        for r in Trainer(run, made["options"], made["vocab"], _made_settings(made, max_steps=1)).run()
    ] == [1]


def test_full_disk_during_a_checkpoint_keeps_the_last_one(made, tmp_path, monkeypatch, capsys):
    from conftest import full_disk
    from elmo import atomic, cli

    run = _made_run(made, tmp_path / "run", steps=1)
    before = (run / "checkpoint.pt").read_bytes()
    full_disk(monkeypatch, atomic, 10_000)
    code = cli.main(["train", "--out", str(run), "--resume", "--quiet", "--max-steps", "2"])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        f"elmo train: error: {run / 'checkpoint.pt'}: cannot write the checkpoint ([Errno 28] No space left "
        "on device); the previous checkpoint is left as it was"
    )
    assert (run / "checkpoint.pt").read_bytes() == before
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.undo()
    assert [
        r["step"] for r in Trainer(run, settings=_made_settings(made, max_steps=2), resume=True).run()
    ] == [2]


def test_export_overwrite_replaces_only_an_export(made, tmp_path, capsys):
    from elmo import cli
    from elmo.errors import ModelError

    run = _made_run(made, tmp_path / "run", steps=1)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "options.json").write_text("{}")
    assert cli.main(["export", str(run), "-o", str(out), "--overwrite"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (
        f"elmo export: error: {out}: not a directory elmo export made (no .elmo-export); --overwrite "
        "replaces only those: choose another directory or empty this one yourself"
    )
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "options.json"]

    export_model(run, tmp_path / "exp")
    export_model(run, tmp_path / "exp", overwrite=True)  # an export is replaced
    assert elmo.load(tmp_path / "exp").config.lstm.dim == 32
    (tmp_path / "exp" / "notes.txt").write_text("added later")
    with pytest.raises(ModelError, match=r"exp: holds files elmo export did not write \(notes.txt\)"):
        export_model(run, tmp_path / "exp", overwrite=True)
    assert (tmp_path / "exp" / "notes.txt").read_text() == "added later"
    with pytest.raises(ModelError, match="not a directory elmo export made"):
        export_model(run, run, overwrite=True)  # never over the run itself
    assert (run / "checkpoint.pt").is_file()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ModelError, match="file: exists and is not a directory"):
        export_model(run, tmp_path / "file", overwrite=True)


@pytest.mark.parametrize(
    ("content", "message"), [(b"{not json", "not valid JSON"), (b"[1]", "a JSON object")]
)
def test_damaged_run_record_is_named(corpus, tmp_path, content, message):
    Trainer(tmp_path / "run", _options(corpus), corpus["vocab"], _settings(corpus, max_steps=1)).run()
    (tmp_path / "run" / "run.json").write_bytes(content)
    with pytest.raises(TrainError, match=rf"run\.json: .*{message}"):
        Trainer(tmp_path / "run", settings=_settings(corpus, max_steps=2), resume=True)

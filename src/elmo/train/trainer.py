"""``elmo train``: bilm-tf's training loop, resumable exactly, data-parallel with torchrun.

One step, as bilm-tf's ``train()``: run both directions over a batch of ``unroll_steps``
positions starting from the state the previous batch ended in, take the gradient of
``0.5 * (loss_fwd + loss_bwd) * unroll_steps``, average it over the ranks, clip all
gradients together to ``all_clip_norm_val``, and apply Adagrad.

A run directory holds ``options.json`` (the training options), ``vocab.txt``,
``run.json`` (what the options file does not say: data, seed, world size),
``checkpoint.pt`` (the latest checkpoint, replaced atomically) and ``log.csv``.
Unlike bilm-tf, a checkpoint also keeps the LSTM state, the data position and the
random generators, so ``--resume`` continues exactly where the run stopped.

The run directory is locked while a run uses it (``.lock``, an exclusive ``flock`` held
by the main process), so a second ``elmo train`` on it fails at once naming the first's
process id. Options are checked before any work (every number finite and in range); a
step whose loss or gradient norm is not finite stops the run without saving, so the last
checkpoint stays the last good one. Checkpoints carry checksums and the digests of the
vocabulary and options (:mod:`elmo.train.checkpoint`); ``--resume`` refuses a damaged
checkpoint and a vocabulary or options that differ from the run's.

Distributed runs split the global batch (``batch_size`` rows per rank at the start of
the run) into data partitions: partition p reads shards p, p + P, p + 2P, ... and
fills its own rows. A rank reads only its partitions, so a run can resume at another
world size as long as that size divides the number of partitions.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from elmo.atomic import atomic_path, write_json_atomic
from elmo.config import ElmoConfig
from elmo.errors import TrainError
from elmo.files import MANIFEST_CAP, OPTIONS_CAP, read_json_capped
from elmo.model import LayerState
from elmo.train.checkpoint import Checkpoint, load_checkpoint, save_checkpoint, vocab_digest
from elmo.train.data import LMBatches
from elmo.train.distributed import World
from elmo.train.lm import NEGATIVE_SAMPLES, TrainingBiLM, init_like_bilm_tf
from elmo.train.models import load_initial_weights
from elmo.train.optim import Adagrad, clip_by_global_norm
from elmo.train.text import count_tokens, find_shards
from elmo.train.vocab import Vocabulary

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; the run directory is not locked there
    fcntl = None  # type: ignore[assignment]

__all__ = ["RunSettings", "Trainer", "train", "train_step"]

log = logging.getLogger("elmo.train")

CHECKPOINT = "checkpoint.pt"
LOCK = ".lock"
# Ranges of the training options that are numbers (bilm-tf's keys); every other number
# in the options must at least be finite. (low, high, whether low itself is allowed)
_OPTION_RANGES: dict[str, tuple[float, float, bool]] = {
    "learning_rate": (0.0, math.inf, False),
    "all_clip_norm_val": (0.0, math.inf, False),
    "dropout": (0.0, 1.0, True),
    "n_epochs": (0.0, math.inf, False),
    "n_train_tokens": (0.0, math.inf, False),
    "n_negative_samples_batch": (0.0, math.inf, False),
    "lstm.cell_clip": (0.0, math.inf, False),
    "lstm.proj_clip": (0.0, math.inf, False),
}
LOG_FIELDS = (
    "step",
    "loss",
    "loss_forward",
    "loss_backward",
    "perplexity",
    "grad_norm",
    "tokens_per_s",
    "elapsed_s",
)


@dataclass
class RunSettings:
    """What a run needs beyond ``options.json``.

    ``max_steps`` overrides bilm-tf's ``n_epochs * n_train_tokens / tokens per batch``.
    ``init_from`` starts from a trained model (fine-tuning: a run directory or
    checkpoint of ours, an exported model directory, or a bilm-tf checkpoint);
    ``reset_softmax`` re-initialises its softmax (new vocabulary) and
    ``reset_optimizer`` its Adagrad accumulators.
    """

    train: list[str] = field(default_factory=list)
    seed: int = 0
    max_steps: int | None = None
    save_every_steps: int = 1250
    save_every_minutes: float = 30.0
    log_every: int = 10
    shuffle: bool = True
    device: str | None = None
    progress: bool = True
    init_from: str | None = None
    reset_softmax: bool = False
    reset_optimizer: bool = False
    partitions: int | None = None


def _state_to_tensors(state: list[LayerState]) -> list[torch.Tensor]:
    return [t for s in state for t in (s.forward_h, s.forward_c, s.backward_h, s.backward_c)]


def _tensors_to_state(tensors: list[torch.Tensor]) -> list[LayerState]:
    return [LayerState(*tensors[i : i + 4]) for i in range(0, len(tensors), 4)]


def _model_config(options: dict[str, Any], source: str) -> ElmoConfig:
    config = ElmoConfig.from_dict(options, source=source)
    return config


def train_step(
    model: TrainingBiLM,
    optimizer: Adagrad,
    batch: dict[str, torch.Tensor],
    state: list[LayerState] | None,
    unroll_steps: int,
    clip_norm: float,
    generator: torch.Generator | None = None,
    net: torch.nn.Module | None = None,
) -> tuple[dict[str, float], list[LayerState]]:
    """bilm-tf's step: gradient of ``loss * unroll_steps``, global-norm clip, Adagrad.

    ``net`` is the model wrapped for data parallelism, if any (it averages the gradients
    over the ranks during the backward pass). Returns this rank's losses, the gradient
    norm before clipping and the detached state to start the next batch from.
    """
    model.train()
    losses = (net or model)(batch, state, generator=generator)
    (losses.loss * unroll_steps).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    norm = clip_by_global_norm(grads, clip_norm)
    optimizer.step()
    optimizer.zero_grad()
    new_state = [LayerState(*(t.detach() for t in _state_to_tensors([s]))) for s in losses.state]
    row = {
        "loss": float(losses.loss.detach()),
        "loss_forward": float(losses.forward.mean.detach()),
        "loss_backward": float(losses.backward.mean.detach()),
        "grad_norm": float(norm),
    }
    return row, new_state


class Trainer:
    """A training run in ``out_dir``: new (``resume=False``) or continued."""

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        options: str | os.PathLike[str] | dict[str, Any] | None = None,
        vocab: str | os.PathLike[str] | None = None,
        settings: RunSettings | None = None,
        resume: bool = False,
    ) -> None:
        self.out = Path(out_dir)
        self.world = World.from_env(settings.device if settings else None)
        self.resume = resume
        self._lock_file: Any = None
        created = not self.out.exists()
        if self.world.is_main:
            self._lock_file = _lock_run_dir(self.out, create=not resume)
        try:
            self._setup(options, vocab, settings, resume)
        except BaseException:
            self.release()
            if created and self.world.is_main:  # a run that never started leaves nothing behind
                with contextlib.suppress(OSError):
                    (self.out / LOCK).unlink()
                    self.out.rmdir()
            raise

    def _setup(
        self,
        options: str | os.PathLike[str] | dict[str, Any] | None,
        vocab: str | os.PathLike[str] | None,
        settings: RunSettings | None,
        resume: bool,
    ) -> None:
        ckpt_path = self.out / CHECKPOINT
        ckpt: Checkpoint | None = None
        if resume:
            if not ckpt_path.is_file():
                raise TrainError(f"{self.out}: nothing to resume (no {CHECKPOINT}); start without --resume")
            ckpt = load_checkpoint(ckpt_path)
            saved = self._read_run_json()
            self.settings = self._merge_settings(saved, settings)
            self.options = self._check_options(options, ckpt.options)
            self.options_source = str(options) if options is not None else str(self.out / "options.json")
            self._check_run_options(ckpt.options)
            self.vocab_path = self.out / "vocab.txt"
            if vocab is not None:
                self._check_vocab(Path(vocab))
        else:
            if ckpt_path.exists():
                raise TrainError(
                    f"{self.out}: already holds a training run; pass --resume to continue it "
                    "or choose another directory"
                )
            if options is None or vocab is None:
                raise TrainError("a new run needs --options and --vocab")
            self.settings = settings or RunSettings()
            self.options = self._read_options(options)
            self.options_source = "options" if isinstance(options, dict) else str(options)
            self.vocab_path = Path(vocab)
        self.vocab = Vocabulary.from_file(self.vocab_path)
        self.vocab_sha256 = vocab_digest(self.vocab.words)
        if ckpt is not None and ckpt.vocab_sha256 is not None and ckpt.vocab_sha256 != self.vocab_sha256:
            raise TrainError(
                f"{self.vocab_path}: differs from the vocabulary the checkpoint in {self.out} was trained "
                f"with (SHA-256 {self.vocab_sha256[:16]}..., the checkpoint's {ckpt.vocab_sha256[:16]}...)"
            )
        self._validate_numbers()
        self.config = _model_config(self.options, self.options_source)
        self._validate()
        self.device = (
            torch.device(self.settings.device) if self.settings.device else self.world.default_device()
        )
        self.batch_size = int(self.options["batch_size"])
        self.unroll_steps = int(self.options["unroll_steps"])
        world_at_start = int(ckpt.meta.get("world_size", 1)) if ckpt else self.world.size
        self.global_rows = int(ckpt.meta["global_rows"]) if ckpt else self.batch_size * self.world.size
        self.partitions = (
            int(ckpt.meta["partitions"]) if ckpt else (self.settings.partitions or self.world.size)
        )
        if self.partitions % self.world.size or self.global_rows % self.partitions:
            raise TrainError(
                f"world size {self.world.size} does not fit the run's {self.partitions} data partitions "
                f"of {self.global_rows} rows in all (started at world size {world_at_start}); "
                "use a world size that divides the number of partitions"
            )
        self.rows = self.global_rows // self.world.size
        self.my_partitions = list(range(self.world.rank, self.partitions, self.world.size))

        torch.manual_seed(self.settings.seed * 1000 + self.world.rank)
        self.sampler_generator = torch.Generator(device="cpu")
        self.sampler_generator.manual_seed(self.settings.seed * 1000 + 7 + self.world.rank)
        self.model = TrainingBiLM(self.config, self.vocab.size)
        self.optimizer = Adagrad(
            dict(self.model.named_parameters()), lr=float(self.options.get("learning_rate", 0.2))
        )
        self.step = 0
        # Training time over all sessions of the run (wall clock, checkpoints included).
        self._elapsed_before = float(ckpt.meta.get("elapsed_s", 0.0)) if ckpt else 0.0
        self.elapsed_s = self._elapsed_before
        self.state: list[LayerState] | None = None
        self.total_steps = self._total_steps(ckpt)
        shards = find_shards(self.settings.train)
        self.batches = LMBatches(
            shards,
            self.vocab,
            batch_size=self.global_rows,
            unroll_steps=self.unroll_steps,
            max_chars=self.config.char_cnn.max_characters_per_token,
            seed=self.settings.seed,
            shuffle=self.settings.shuffle,
            partitions=self.partitions,
            partition_ids=self.my_partitions,
        )
        if ckpt is not None:
            self._restore(ckpt)
        else:
            self._initialise()
        self.model.to(self.device)
        for name, acc in self.optimizer.accumulators.items():
            self.optimizer.accumulators[name] = acc.to(self.device)
        self.optimizer.params = dict(self.model.named_parameters())
        if self.state is None:
            self.state = self.model.zero_state(self.rows)
        self.state = [LayerState(*(t.to(self.device) for t in _state_to_tensors([s]))) for s in self.state]
        self._ddp = None
        if self.world.size > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self._ddp = DistributedDataParallel(self.model, device_ids=ids)

    # ------------------------------------------------------------------ setup
    def _read_options(self, options: str | os.PathLike[str] | dict[str, Any]) -> dict[str, Any]:
        if isinstance(options, dict):
            return dict(options)
        path = Path(options)
        ElmoConfig.from_json(path)  # readable errors for a bad file
        return read_json_capped(path, OPTIONS_CAP, "options file", TrainError)

    def _check_options(self, given: Any, saved: dict[str, Any]) -> dict[str, Any]:
        if given is None:
            return saved
        new = self._read_options(given)
        key = _first_difference(new, saved)
        if key is not None:
            raise TrainError(
                f"{given}: option '{key}' is {_show(new, key)} but the checkpoint in "
                f"{self.out} was trained with {_show(saved, key)}; resume without --options"
            )
        return saved

    def _check_run_options(self, saved: dict[str, Any]) -> None:
        """The run directory's options.json must still be the checkpoint's options."""
        path = self.out / "options.json"
        if not path.is_file():
            return
        try:
            on_disk = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise TrainError(f"{path}: cannot read the run's options: {e}") from None
        key = _first_difference(on_disk, saved) if isinstance(on_disk, dict) else "(the whole file)"
        if key is not None:
            raise TrainError(
                f"{path}: option '{key}' differs from the options the checkpoint in {self.out} was "
                f"trained with ({_show(on_disk, key)} vs {_show(saved, key)})"
            )

    def _read_run_json(self) -> dict[str, Any]:
        path = self.out / "run.json"
        saved = read_json_capped(path, MANIFEST_CAP, "run record", TrainError)
        if not isinstance(saved, dict):
            raise TrainError(f"{path}: expected a JSON object of run settings")
        return saved

    def _check_vocab(self, given: Path) -> None:
        if Vocabulary.from_file(given).words != Vocabulary.from_file(self.out / "vocab.txt").words:
            raise TrainError(f"{given}: differs from the vocabulary the run in {self.out} was started with")

    def _merge_settings(self, saved: dict[str, Any], given: RunSettings | None) -> RunSettings:
        merged = RunSettings(**{k: v for k, v in saved.items() if k in RunSettings.__dataclass_fields__})
        if given is not None:
            # What may change between sessions: the schedule, logging and device.
            for key in (
                "max_steps",
                "save_every_steps",
                "save_every_minutes",
                "log_every",
                "device",
                "progress",
            ):
                setattr(merged, key, getattr(given, key))
        merged.init_from = None
        return merged

    def _validate_numbers(self) -> None:
        """Every number in the options finite, the known ones in range; before any work."""
        for name, value in _numbers(self.options):
            if not math.isfinite(value):
                raise TrainError(f"{self.options_source}: '{name}' must be a finite number, found {value}")
            if name in _OPTION_RANGES:
                low, high, low_ok = _OPTION_RANGES[name]
                if value > high or value < low or (value == low and not low_ok):
                    bound = f">= {low:g}" if low_ok else f"> {low:g}"
                    if high != math.inf:
                        bound += f" and <= {high:g}"
                    raise TrainError(f"{self.options_source}: '{name}' must be {bound}, found {value}")
        s = self.settings
        for name, minutes in (("save_every_minutes", s.save_every_minutes),):
            if not math.isfinite(minutes) or minutes < 0:
                raise TrainError(f"{name} must be a finite number >= 0, found {minutes}")

    def _validate(self) -> None:
        opts, source = self.options, self.options_source
        for key in ("batch_size", "unroll_steps"):
            if not isinstance(opts.get(key), int) or opts[key] < 1:
                raise TrainError(
                    f"{source}: '{key}' must be a positive integer, found {json.dumps(opts.get(key))}"
                )
        n_vocab = opts.get("n_tokens_vocab")
        if n_vocab is not None and n_vocab != self.vocab.size:
            raise TrainError(
                f"{source}: n_tokens_vocab is {n_vocab} but {self.vocab_path} holds {self.vocab.size} words"
            )
        sampled = opts.get("n_negative_samples_batch", NEGATIVE_SAMPLES)
        if opts.get("sample_softmax", True) and not (
            isinstance(sampled, int) and 0 < sampled <= self.vocab.size
        ):
            raise TrainError(
                f"{source}: n_negative_samples_batch must be an integer from 1 to the vocabulary's "
                f"size ({self.vocab.size} words in {self.vocab_path}), found {json.dumps(sampled)}"
            )
        if not opts.get("bidirectional", True):
            raise TrainError(
                f"{source}: bidirectional is false; only bidirectional LMs (ELMo) are trained here"
            )
        if opts.get("share_embedding_softmax"):
            raise TrainError(
                f"{source}: share_embedding_softmax needs word inputs; ELMo's char-CNN inputs cannot "
                "share it (bilm-tf refuses it too)"
            )
        if not self.settings.train:
            raise TrainError("no training data given (--train)")

    def _total_steps(self, ckpt: Checkpoint | None) -> int:
        if self.settings.max_steps is not None:
            return int(self.settings.max_steps)
        if ckpt is not None and "total_steps" in ckpt.meta:
            return int(ckpt.meta["total_steps"])
        tokens = int(self.options.get("n_train_tokens", 768648884))
        epochs = int(self.options.get("n_epochs", 10))
        return epochs * int(tokens / (self.global_rows * self.unroll_steps))

    def _initialise(self) -> None:
        g = torch.Generator().manual_seed(self.settings.seed)
        init_like_bilm_tf(self.model, g)
        if self.settings.init_from:
            load_initial_weights(
                self.model,
                self.settings.init_from,
                vocab=self.vocab,
                optimizer=None if self.settings.reset_optimizer else self.optimizer,
                reset_softmax=self.settings.reset_softmax,
            )
        if self.world.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            try:
                write_json_atomic(self.out / "options.json", self.options, indent=2)
                if self.vocab_path.resolve() != (self.out / "vocab.txt").resolve():
                    with atomic_path(self.out / "vocab.txt") as tmp:
                        shutil.copyfile(self.vocab_path, tmp)
                write_json_atomic(self.out / "run.json", asdict(self.settings), indent=2)
            except OSError as e:
                raise TrainError(f"cannot write the run's files in {self.out}: {_os_reason(e)}") from None
            self._warn_about_corpus_size()
        self.world.barrier()

    def _warn_about_corpus_size(self) -> None:
        given = self.options.get("n_train_tokens")
        words = count_tokens(find_shards(self.settings.train))
        if given is None:
            log.warning(
                "options have no n_train_tokens: bilm-tf's default 768648884 (1B Word Benchmark) is used "
                "for the number of steps; the training data holds %d tokens",
                words,
            )
        elif abs(int(given) - words) > 0.01 * max(words, 1):
            log.warning(
                "n_train_tokens is %d but the training data holds %d tokens: an 'epoch' will be %.2f "
                "passes over the data (bilm-tf takes the number as given)",
                int(given),
                words,
                int(given) / max(words, 1),
            )

    def _restore(self, ckpt: Checkpoint) -> None:
        missing = set(dict(self.model.named_parameters())) - set(ckpt.model)
        if missing:
            raise TrainError(f"{self.out / CHECKPOINT}: lacks parameters {sorted(missing)[:3]}")
        try:
            self.model.load_state_dict(ckpt.model, strict=False)
            self.optimizer.load_state_dict(ckpt.optimizer)
        except (RuntimeError, KeyError, ValueError) as e:
            raise TrainError(f"{self.out / CHECKPOINT}: does not fit the options: {e}") from None
        self.step = ckpt.step
        full = _tensors_to_state(ckpt.lstm_state)
        per_partition = self.global_rows // self.partitions
        rows = torch.cat(
            [torch.arange(p * per_partition, (p + 1) * per_partition) for p in self.my_partitions]
        )
        self.state = [s.rows(rows) for s in full]
        same_world = int(ckpt.meta.get("world_size", 1)) == self.world.size
        if ckpt.data_state is not None:
            self.batches.load_state_dict(ckpt.data_state)
        rng = ckpt.rng
        if same_world and f"torch_{self.world.rank}" in rng:
            torch.set_rng_state(rng[f"torch_{self.world.rank}"])
            self.sampler_generator.set_state(rng[f"sampler_{self.world.rank}"])
        elif not same_world:
            log.warning("resuming at another world size: random draws (dropout, samples) start afresh")

    # ------------------------------------------------------------------ loop
    def _batch_tensors(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        return {k: torch.as_tensor(v, dtype=torch.long, device=self.device) for k, v in batch.items()}

    def train_step(self, batch: dict[str, np.ndarray]) -> dict[str, float]:
        """One optimisation step on ``batch``; returns its losses and gradient norm."""
        row, self.state = train_step(
            self.model,
            self.optimizer,
            self._batch_tensors(batch),
            self.state,
            unroll_steps=self.unroll_steps,
            clip_norm=float(self.options.get("all_clip_norm_val", 10.0)),
            generator=self.sampler_generator,
            net=self._ddp,
        )
        self.step += 1
        f, b = self.world.mean(row["loss_forward"]), self.world.mean(row["loss_backward"])
        row.update(loss=0.5 * (f + b), loss_forward=f, loss_backward=b)
        return row

    def checkpoint(self) -> Checkpoint:
        """The run's current state (collective: every rank must call it)."""
        per_partition = self.global_rows // self.partitions
        assert self.state is not None  # made when the run starts
        local = {}
        for i, p in enumerate(self.my_partitions):
            rows = slice(i * per_partition, (i + 1) * per_partition)
            local[p] = [t.detach().cpu() for s in self.state for t in _state_to_tensors([s.rows(rows)])]
        gathered = self.world.gather_objects(
            {
                "state": local,
                "data": self.batches.state_dict(),
                "torch": torch.get_rng_state(),
                "sampler": self.sampler_generator.get_state(),
            }
        )
        by_partition: dict[int, list[torch.Tensor]] = {}
        for g in gathered:
            by_partition.update(g["state"])
        n = len(by_partition[0])
        lstm_state = [torch.cat([by_partition[p][k] for p in range(self.partitions)]) for k in range(n)]
        data_state = gathered[0]["data"]
        for g in gathered[1:]:
            data_state = self.batches.merge_state_dicts(data_state, g["data"])
        rng = {}
        for r, g in enumerate(gathered):
            rng[f"torch_{r}"] = g["torch"]
            rng[f"sampler_{r}"] = g["sampler"]
        return Checkpoint(
            step=self.step,
            options=self.options,
            vocab_size=self.vocab.size,
            vocab_sha256=self.vocab_sha256,
            model={k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            optimizer={k: v.detach().cpu() for k, v in self.optimizer.state_dict().items()},
            lstm_state=lstm_state,
            data_state=data_state,
            rng=rng,
            meta={
                "world_size": self.world.size,
                "global_rows": self.global_rows,
                "partitions": self.partitions,
                "total_steps": self.total_steps,
                "seed": self.settings.seed,
                "elapsed_s": self.elapsed_s,
            },
        )

    def save(self) -> None:
        """Write the checkpoint; refused (the last one kept) if a parameter is not finite."""
        ckpt = self.checkpoint()
        if self.world.is_main:
            bad = next((k for k, v in ckpt.model.items() if not bool(torch.isfinite(v).all())), None)
            if bad is not None:
                raise TrainError(
                    f"step {self.step}: parameter {bad} is not finite; no checkpoint written, the last one "
                    f"in {self.out} is intact"
                )
            save_checkpoint(ckpt, self.out / CHECKPOINT)
        self.world.barrier()

    def release(self) -> None:
        """Let go of the run directory's lock (the run ends, or failed to start)."""
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def close(self) -> None:
        """Release the lock and the process group."""
        self.release()
        self.world.close()

    def run(self, on_step: Callable[[int, dict[str, float]], None] | None = None) -> list[dict[str, float]]:
        """Train until ``total_steps``; returns the logged rows of this session."""
        s = self.settings
        history: list[dict[str, float]] = []
        logger = _CSVLog(self.out / "log.csv", self.step) if self.world.is_main else None
        bar = None
        if s.progress and self.world.is_main:
            from tqdm import tqdm

            bar = tqdm(total=self.total_steps, initial=self.step, unit="step", dynamic_ncols=True)
        tokens_per_step = self.global_rows * self.unroll_steps
        # Ctrl-C and SIGTERM finish the current step and save before stopping, so no
        # step is half applied and --resume continues from the very next batch.
        stopper = _StopRequest()
        start = last_save = time.monotonic()
        window_start, window_steps = start, 0
        try:
            while self.step < self.total_steps:
                batch = next(self.batches)
                row = self.train_step(batch)
                if not (math.isfinite(row["loss"]) and math.isfinite(row["grad_norm"])):
                    # The step is applied already: stop before anything saves its result.
                    raise TrainError(
                        f"step {self.step}: the loss is {row['loss']:g} and the gradient norm "
                        f"{row['grad_norm']:g} (not finite); stopped without saving: the last checkpoint "
                        f"in {self.out} is intact (a lower learning_rate or all_clip_norm_val may help)"
                    )
                window_steps += 1
                now = time.monotonic()
                row["perplexity"] = math.exp(min(row["loss"], 700.0))
                row["tokens_per_s"] = window_steps * tokens_per_step / max(now - window_start, 1e-9)
                row["elapsed_s"] = self.elapsed_s = self._elapsed_before + now - start
                row["step"] = self.step
                history.append(row)
                if on_step is not None:
                    on_step(self.step, row)
                if logger is not None and (self.step % s.log_every == 0 or self.step == self.total_steps):
                    logger.write(row)
                    window_start, window_steps = now, 0
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{row['loss']:.3f}", ppl=f"{row['perplexity']:.1f}", refresh=False)
                due_steps = bool(s.save_every_steps) and self.step % s.save_every_steps == 0
                due_time = bool(s.save_every_minutes) and now - last_save >= 60 * s.save_every_minutes
                due_time, stop = self.world.any([due_time, stopper.requested])
                if due_steps or due_time or stop:
                    self.save()
                    last_save = time.monotonic()
                if stop:
                    raise KeyboardInterrupt
            self.save()
        finally:
            stopper.restore()
            if bar is not None:
                bar.close()
            if logger is not None:
                logger.close()
            self.release()
        return history


class _StopRequest:
    """Turns SIGINT/SIGTERM into a flag checked between steps (main thread only)."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested:  # a second request stops at once
            raise KeyboardInterrupt
        self.requested = True
        log.warning("stopping after this step (signal %d); a checkpoint will be written", signum)

    def restore(self) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


class _CSVLog:
    """``log.csv``, one row per logged step; rows past the resumed step are dropped."""

    def __init__(self, path: Path, resumed_step: int) -> None:
        rows = []
        if path.is_file():
            with path.open(newline="", encoding="utf-8") as f:
                rows = [
                    r
                    for r in csv.DictReader(f)
                    if r.get("step", "").isdigit() and int(r["step"]) <= resumed_step
                ]
        self.file = path.open("w", newline="", encoding="utf-8")
        self.writer = csv.DictWriter(self.file, fieldnames=LOG_FIELDS, extrasaction="ignore")
        self.writer.writeheader()
        self.writer.writerows(rows)
        self.file.flush()

    def write(self, row: dict[str, float]) -> None:
        self.writer.writerow({k: (f"{v:.9g}" if isinstance(v, float) else v) for k, v in row.items()})
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def train(
    out_dir: str | os.PathLike[str],
    options: str | os.PathLike[str] | dict[str, Any] | None = None,
    vocab: str | os.PathLike[str] | None = None,
    settings: RunSettings | None = None,
    resume: bool = False,
) -> list[dict[str, float]]:
    """Train (or with ``resume=True`` continue) a biLM in ``out_dir``; see :class:`Trainer`."""
    trainer = Trainer(out_dir, options=options, vocab=vocab, settings=settings, resume=resume)
    try:
        return trainer.run()
    finally:
        trainer.close()


def _os_reason(e: OSError) -> str:
    return f"[Errno {e.errno}] {e.strerror}" if e.errno else str(e)


def _lock_run_dir(out: Path, create: bool) -> Any:
    """Take the run directory's lock (non-blocking); the open lock file, to close to release.

    A second process fails at once with the process id the first wrote into the file."""
    if fcntl is None:
        return None
    try:
        if create:
            out.mkdir(parents=True, exist_ok=True)
        elif not out.is_dir():
            return None  # nothing to resume: the caller says so
        f = open(out / LOCK, "a+", encoding="utf-8")  # noqa: SIM115  held open while the run lasts
    except OSError as e:
        raise TrainError(f"cannot use {out} as the run directory: {_os_reason(e)}") from None
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise TrainError(
            f"{out}: another elmo train is running in this directory ({holder}); "
            "wait for it to end or choose another directory"
        ) from None
    except OSError:
        return f  # a file system without locks (some NFS mounts): go on unlocked
    with contextlib.suppress(OSError):
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}\n")
        f.flush()
    return f


def _numbers(value: Any, prefix: str = "") -> list[tuple[str, float]]:
    """(dotted name, value) of every number in an options object (booleans excluded)."""
    found: list[tuple[str, float]] = []
    if isinstance(value, dict):
        for key, item in value.items():
            found += _numbers(item, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found += _numbers(item, f"{prefix}[{i}]")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        found.append((prefix, float(value)))
    return found


def _first_difference(new: dict[str, Any], saved: dict[str, Any], prefix: str = "") -> str | None:
    """The dotted name of the first option that differs between two options objects."""
    for key in sorted(set(new) | set(saved), key=str):
        name = f"{prefix}.{key}" if prefix else str(key)
        a, b = new.get(key), saved.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            inner = _first_difference(a, b, name)
            if inner is not None:
                return inner
        elif json.dumps(a, sort_keys=True) != json.dumps(b, sort_keys=True):
            return name
    return None


def _show(options: dict[str, Any], name: str) -> str:
    value: Any = options
    for part in name.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return json.dumps(value)

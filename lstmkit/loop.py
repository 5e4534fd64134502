"""The one training loop every script shares: epochs of steps, validation after each
epoch, the best model kept, and resumable checkpoints.

A script supplies ``train_step(epoch, step) -> loss`` (which must pick its batch from
``epoch`` and ``step`` alone, e.g. with ``epoch_order``), ``validate() -> metrics`` and
``save_best()``. The loop owns the bookkeeping:

- ``out/last.safetensors`` holds weights, optimizer, schedule, progress and every RNG
  state; it is written atomically every ``save_every`` steps and after every epoch, so a
  crash loses at most the steps since then, and ``--resume`` continues from it. Because
  batches depend only on (seed, epoch, step) and the RNG states are restored, a resumed
  run ends with exactly the numbers of a run that never stopped.
- ``out/metrics.csv`` and a curves PNG are rewritten after every epoch.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from lstmkit.checkpoint import load_training_state, read_metadata, save_training_state, weight_settings
from lstmkit.runtools import Dist, NonFiniteLoss, Timer, UserError, plot_curves, write_metrics

log = logging.getLogger("training")


def epoch_order(n: int, epoch: int, seed: int, rank: int = 0, world: int = 1) -> torch.Tensor:
    """A shuffled order of ``n`` items for ``epoch``: the same on every run, resume and rank;
    each rank takes its own equal share."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(n, generator=g)
    return order[rank::world][: n // world]


@dataclass
class Loop:
    kind: str                          # checkpoint kind of the training state
    config: Any                        # the model's config dataclass
    model: torch.nn.Module             # what is trained and saved
    optimizer: torch.optim.Optimizer
    out: Path
    epochs: int
    steps_per_epoch: int
    train_step: Callable[[int, int], float]
    validate: Callable[[], dict]
    save_best: Callable[[], None]
    metric: str                        # the key of validate()'s result that picks the best model
    higher_is_better: bool = True
    scheduler: Any = None
    save_every: int = 500
    max_steps: int = 0
    dist: Dist = field(default_factory=Dist)
    metadata: dict[str, str] = field(default_factory=dict)
    curves: tuple[list[str], list[str]] = (["train_loss"], [])
    title: str = ""
    seed: int = 0
    timer: Timer = field(default_factory=Timer)  # pass the script's own, to count data loading too

    def __post_init__(self):
        self.progress = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "best": None, "best_epoch": 0,
                         "history": [], "loss_sum": 0.0, "loss_count": 0}

    @property
    def last_path(self) -> Path:
        return self.out / "last.safetensors"

    def resume(self) -> None:
        if not self.last_path.is_file():
            raise UserError(f"nothing to resume: {self.last_path} does not exist")
        # compare what shapes the weights before loading them, so that the message names the setting
        now = weight_settings(self.config)
        saved = json.loads(read_metadata(self.last_path).get("config", "{}"))
        saved = {k: v for k, v in saved.items() if k in now or k not in asdict(self.config)}
        if saved != now:
            changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
            details = ", ".join(f"{k} (saved {saved.get(k)!r}, now {now.get(k)!r})" for k in changed)
            raise UserError(f"--resume needs the settings that shape the weights of the saved run; these differ: "
                            f"{details}")
        _, self.progress = load_training_state(self.last_path, kind=self.kind, model=self.model,
                                               optimizer=self.optimizer, scheduler=self.scheduler,
                                               restore_rng=self.dist.main)
        self.timer.start -= self.progress.get("seconds", 0.0)
        if not self.dist.main:
            torch.manual_seed(self.seed + self.dist.rank * 7919 + self.progress["global_step"])
        log.info("resumed from %s at epoch %d, step %d", self.last_path, self.progress["epoch"] + 1,
                 self.progress["step_in_epoch"])

    def _last_saved(self) -> str:
        if self.last_path.is_file():
            return f"The last good state is {self.last_path} (--resume continues from it)."
        return "No state was saved before it."

    def checkpoint(self) -> None:
        self.progress["seconds"] = round(self.timer(), 1)  # the clock goes on after --resume
        if self.dist.main:
            save_training_state(self.last_path, kind=self.kind, config=self.config, model=self.model,
                                optimizer=self.optimizer, scheduler=self.scheduler, progress=self.progress,
                                metadata=self.metadata)

    def _better(self, value: float) -> bool:
        best = self.progress["best"]
        return best is None or (value > best if self.higher_is_better else value < best)

    def run(self) -> dict:
        p = self.progress
        for epoch in range(p["epoch"], self.epochs):
            bar = tqdm(range(p["step_in_epoch"], self.steps_per_epoch), desc=f"epoch {epoch + 1}/{self.epochs}",
                       initial=p["step_in_epoch"], total=self.steps_per_epoch, leave=False,
                       disable=not self.dist.main)
            self.model.train()
            for step in bar:
                try:
                    loss = self.train_step(epoch, step)
                except NonFiniteLoss as err:
                    bar.close()
                    raise UserError(
                        f"training stopped: the loss was {err.args[0]} at step {p['global_step'] + 1} (epoch "
                        f"{epoch + 1}, batch {step + 1} of {self.steps_per_epoch}), so that step was not taken. "
                        f"Likely causes: non-finite or huge inputs (encoder weights that are random or broken), or "
                        f"a learning rate too high for this model. {self._last_saved()}") from err
                if self.scheduler is not None:
                    self.scheduler.step()
                p["loss_sum"] += loss
                p["loss_count"] += 1
                p["global_step"] += 1
                p["step_in_epoch"] = step + 1
                bar.set_postfix(loss=f"{loss:.4f}")
                stop = bool(self.max_steps) and p["global_step"] >= self.max_steps
                if stop or (self.save_every and p["global_step"] % self.save_every == 0
                            and step + 1 < self.steps_per_epoch):
                    self.checkpoint()
                if stop:
                    break
            bar.close()
            if p["step_in_epoch"] == self.steps_per_epoch:
                self._end_epoch(epoch)
            if self.max_steps and p["global_step"] >= self.max_steps:
                log.info("stopped after --max-steps %d; --resume continues", self.max_steps)
                break
        return p

    def fit(self, resume: bool = False, **summary) -> dict:
        """Resume if asked, run, and print a one-line JSON summary of the best epoch."""
        if resume:
            self.resume()
        p = self.run()
        if p["history"] and self.dist.main:
            print(json.dumps({f"best_{self.metric}": p["best"], "best_epoch": p["best_epoch"], "epochs": p["epoch"],
                              "steps": p["global_step"], "seconds": round(self.timer(), 1), "out": str(self.out),
                              **summary}))
        return p

    def _end_epoch(self, epoch: int) -> None:
        p = self.progress
        train_loss = self.dist.all_mean(p["loss_sum"] / max(1, p["loss_count"]))
        self.model.eval()
        with torch.no_grad():
            metrics = self.validate()
        row = {"epoch": epoch + 1, "step": p["global_step"], "train_loss": round(train_loss, 6),
               **{k: round(float(v), 6) for k, v in metrics.items()},
               "lr": self.scheduler.get_last_lr()[0] if self.scheduler is not None
               else self.optimizer.param_groups[0]["lr"],
               "seconds": round(self.timer(), 1)}
        p["history"].append(row)
        log.info("epoch %d: %s", epoch + 1, ", ".join(f"{k} {v}" for k, v in row.items() if k != "epoch"))
        if self._better(metrics[self.metric]):
            p["best"], p["best_epoch"] = float(metrics[self.metric]), epoch + 1
            if self.dist.main:
                self.save_best()
        p.update(epoch=epoch + 1, step_in_epoch=0, loss_sum=0.0, loss_count=0)
        self.checkpoint()
        if self.dist.main:
            write_metrics(self.out / "metrics.csv", p["history"])
            plot_curves(self.out / "loss_curve.png", p["history"], *self.curves, title=self.title)

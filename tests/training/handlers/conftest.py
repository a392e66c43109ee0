"""A tiny real MONAI trainer for the handler tests: a 3D convolution on four non-cubic volumes, CPU, seconds."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from ignite.engine import Engine, Events
from monai.data import DataLoader
from monai.engines import SupervisedTrainer
from monai.handlers import LrScheduleHandler

from medseg3d.training.sampling import ResumableSampler

SHAPE = (6, 5, 4)  # non-cubic: a swapped axis changes the shapes


class IndexedCases(torch.utils.data.Dataset):
    """Case ``index`` of a few fixed tensors, indexed by the ``(index, seed)`` pairs a ``ResumableSampler`` yields."""

    def __init__(self, cases: int, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.items = [
            {"image": torch.rand(1, *SHAPE, generator=generator), "label": torch.rand(2, *SHAPE, generator=generator)}
            for _ in range(cases)
        ]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        index, _ = key
        return self.items[index]


class ScriptedEvaluator(Engine):
    """A validation engine whose key metric at trainer epoch ``e`` is ``scores[e - 1]``, as MONAI's evaluator
    stores it (``state.metrics``, ``state.epoch`` set to the trainer's epoch)."""

    def __init__(self, scores: Sequence[float]) -> None:
        super().__init__(lambda engine, batch: batch)
        self.scores = list(scores)
        self.state.best_metric, self.state.best_metric_epoch = -1.0, -1

    def validate(self, trainer: Engine) -> None:
        self.state.max_epochs = None  # a fresh run each time, as MONAI's Evaluator.run does
        self.run([0], max_epochs=1)
        self.state.epoch = trainer.state.epoch
        self.state.metrics = {"val_mean_dice": self.scores[trainer.state.epoch - 1]}


@dataclass
class Tiny:
    """What ``make_trainer`` built."""

    trainer: SupervisedTrainer
    network: torch.nn.Module
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler


def build_trainer(
    max_epochs: int = 3,
    cases: int = 4,
    evaluator: ScriptedEvaluator | None = None,
    handlers: Callable[[Tiny], Sequence[Any]] | None = None,
    accumulation_steps: int = 1,
) -> Tiny:
    """A ``SupervisedTrainer``, batch 1: seeded weights, SGD with momentum, a step schedule stepped every iteration,
    a shuffled ``ResumableSampler``. ``handlers`` builds the handlers to attach after the evaluator's validation."""
    torch.manual_seed(0)
    network = torch.nn.Conv3d(1, 2, 3, padding=1)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1, momentum=0.9)
    lr_scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.5)
    dataset = IndexedCases(cases)
    loader = DataLoader(dataset, batch_size=1, sampler=ResumableSampler(dataset, seed=0), num_workers=0)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=max_epochs,
        train_data_loader=loader,
        network=network,
        optimizer=optimizer,
        loss_function=torch.nn.MSELoss(),
        train_handlers=[LrScheduleHandler(lr_scheduler, epoch_level=False, print_lr=False)],
        accumulation_steps=accumulation_steps,
    )
    tiny = Tiny(trainer, network, optimizer, lr_scheduler)
    if evaluator is not None:
        trainer.add_event_handler(Events.EPOCH_COMPLETED, evaluator.validate)
    for handler in handlers(tiny) if handlers else ():
        handler.attach(trainer)
    return tiny


@pytest.fixture
def make_trainer() -> Callable[..., Tiny]:
    """``make_trainer(max_epochs=3, cases=4, evaluator=None, handlers=None, accumulation_steps=1)``: see
    ``build_trainer``."""
    return build_trainer


@pytest.fixture
def scripted_evaluator() -> type[ScriptedEvaluator]:
    """``scripted_evaluator(scores)``: a validation engine scoring ``scores[epoch - 1]`` (``ScriptedEvaluator``)."""
    return ScriptedEvaluator

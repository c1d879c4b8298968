"""What the explorer's workers post back to the app (each handled on the app's thread):
a sweep's result or failure, the restored choices, the model and GPU lists, a plan's result
or failure, and each event of a measurement."""

from __future__ import annotations

from textual.message import Message

from .backend import Choices, PlanInputs, PlanSnapshot, Snapshot


class SweepDone(Message):
    def __init__(self, snapshot: Snapshot) -> None:
        super().__init__()
        self.snapshot = snapshot


class SweepFailed(Message):
    def __init__(self, choices: Choices, error: str, field: str) -> None:
        super().__init__()
        self.choices = choices
        self.error = error
        self.field = field


class Restored(Message):
    def __init__(self, choices: Choices, restored: bool) -> None:
        super().__init__()
        self.choices = choices
        self.restored = restored


class OptionsReady(Message):
    def __init__(self, models, gpus) -> None:
        super().__init__()
        self.models = models
        self.gpus = gpus


class PlanDone(Message):
    def __init__(self, snapshot: PlanSnapshot) -> None:
        super().__init__()
        self.snapshot = snapshot


class PlanFailed(Message):
    def __init__(self, choices: Choices, inputs: PlanInputs, error: str) -> None:
        super().__init__()
        self.choices = choices
        self.inputs = inputs
        self.error = error


class ProfileEvent(Message):
    def __init__(self, event: dict) -> None:
        super().__init__()
        self.event = event

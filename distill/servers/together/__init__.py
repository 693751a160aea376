"""A local fake of the Together files and fine-tuning API, for offline tests and the demo."""

from .clock import Clock, ManualClock
from .server import FakeTogether
from .store import FAIL_MARKER, INVALID_MARKER

__all__ = ["FAIL_MARKER", "INVALID_MARKER", "Clock", "FakeTogether", "ManualClock"]

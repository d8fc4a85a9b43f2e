"""The flywheel, measured (issue 21): a tool-use task environment with a checker, an agent fleet, a gateway stand-in
and ``l07 run`` learning from the fleet's traces; ``benchmarks/flywheel.py`` and ``l07 demo --continuous`` run it."""

from .environment import TASK_TYPE, Task, Verdict, check, corrupted, expert, make_task
from .flywheel import Flywheel, FlywheelConfig, Round

__all__ = ["TASK_TYPE", "Flywheel", "FlywheelConfig", "Round", "Task", "Verdict", "check", "corrupted", "expert",
           "make_task"]

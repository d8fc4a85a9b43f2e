"""The autonomous loop (contract §9): policies, triggers, breakers, schedules, the leader lease, the watched folder.

``LearningLoop.build(settings, policy_file=..., watch=[...])`` is what ``l07 run`` starts; ``status()`` and
``resume(policy)`` serve ``l07 loop status|resume`` and ``GET /api/v1/loop``.
"""

from .breakers import PolicyBreakers
from .lease import LeaderLease
from .loop import LearningLoop
from .policies import LoopPolicy, PolicySet, default_policies, evaluate_trigger, load_policies
from .schedules import ScheduledTask, Scheduler, default_tasks
from .watch import FolderWatcher

__all__ = [
    "FolderWatcher", "LeaderLease", "LearningLoop", "LoopPolicy", "PolicyBreakers", "PolicySet", "ScheduledTask",
    "Scheduler", "default_policies", "default_tasks", "evaluate_trigger", "load_policies",
]

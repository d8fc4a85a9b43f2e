"""Generated preference data for the RLHF tests and benchmark: helpful answers preferred over dismissive ones.

Every prompt asks a customer-service question about a topic; the chosen answer is polite and helpful, the rejected
one dismissive. Held-out pairs use topics never seen in training, so a model must learn the style, not the topic.
"""

from __future__ import annotations

import random

from L07_learning.models import PreferencePair

TOPICS = [
    "order", "parcel", "invoice", "ticket", "refund", "booking", "account", "password", "delivery", "payment",
    "subscription", "warranty", "receipt", "voucher", "reservation", "flight", "hotel", "train", "contract", "bill",
    "upgrade", "license", "device", "laptop", "phone", "router", "printer", "camera", "charger", "battery",
    "package", "shipment", "appointment", "request", "complaint", "claim", "report", "profile", "card", "loan",
]
PROMPTS = ["Where is my {t}?", "Can you help me with my {t}?", "What happened to my {t}?", "Please check my {t}."]
CHOSEN = [
    "Thank you for asking. Your {t} is ready and I am happy to help.",
    "Happy to help! Your {t} is on its way, thank you for your patience.",
]
REJECTED = [
    "No. Figure out the {t} yourself.",
    "Go away, I will not look at your {t}.",
]


def make_pairs(topics: list[str], per_topic: int = 2, seed: int = 0) -> list[PreferencePair]:
    """Preference pairs over ``topics`` (``per_topic`` prompts each), deterministic for a seed."""
    rng = random.Random(seed)
    pairs = []
    for t in topics:
        for _ in range(per_topic):
            pairs.append(PreferencePair(
                prompt=rng.choice(PROMPTS).format(t=t), chosen=rng.choice(CHOSEN).format(t=t),
                rejected=rng.choice(REJECTED).format(t=t), margin=40.0, task_type="support", source="generated",
            ))
    return pairs


def train_and_heldout(n_train_topics: int = 30, per_topic: int = 2, seed: int = 0) -> tuple[list, list]:
    """Training pairs and held-out pairs on disjoint topics."""
    return (make_pairs(TOPICS[:n_train_topics], per_topic, seed),
            make_pairs(TOPICS[n_train_topics:], per_topic, seed + 1))

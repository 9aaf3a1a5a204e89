"""Attacks: malicious clients as update transforms and data poisoning, composable with every
strategy; the robust reducers in `fedtorch.aggregators` (median, trimmed mean, Krum) defend.

    SignFlip, GaussianAttack, Scaling   model poisoning (model_poisoning.py)
    LabelFlip, Backdoor                 data poisoning (data_poisoning.py)
"""

from fedtorch.attacks.base import Attack, choose_attackers
from fedtorch.attacks.data_poisoning import Backdoor, LabelFlip, stamp_trigger, with_client_samples
from fedtorch.attacks.model_poisoning import GaussianAttack, Scaling, SignFlip

__all__ = [
    "Attack",
    "Backdoor",
    "GaussianAttack",
    "LabelFlip",
    "Scaling",
    "SignFlip",
    "choose_attackers",
    "stamp_trigger",
    "with_client_samples",
]

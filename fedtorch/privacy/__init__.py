"""Privacy and security as update transforms that compose with every strategy.

DPFedAvg, LocalDPSGD    the privacy config group's mechanisms (mechanisms.py)
CentralDP / DPClip      user-level DP-FedAvg, fixed or adaptive clipping (central.py)
DPSGDTrainer            sample-level DP-SGD on every client (dpsgd.py)
LocalDPAccounting       per-client accounting of local DP-SGD (dpsgd.py)
PrivacyAccountant       (epsilon, delta) by Google's dp-accounting library (accounting.py)
PrivacyBudget           no round past the target epsilon; epsilon into the summary (budget.py)
SecureAggregation       Bonawitz et al. 2017 masking with dropout recovery, simulated (secagg.py)
"""

from fedtorch.privacy.accounting import (
    PrivacyAccountant,
    Sampling,
    calibrate_noise_multiplier,
    compute_epsilon,
    sampling_of,
)
from fedtorch.privacy.budget import PrivacyBudget
from fedtorch.privacy.central import Accounting, CentralDP, DPClip, clip_by_norm
from fedtorch.privacy.dpsgd import DPSGDTrainer, LocalDPAccounting
from fedtorch.privacy.mechanisms import DPFedAvg, LocalDPSGD, PrivacyMechanism
from fedtorch.privacy.secagg import SecureAggregation, SecureAggregationOverflow

__all__ = [
    "Accounting",
    "CentralDP",
    "DPClip",
    "DPFedAvg",
    "DPSGDTrainer",
    "LocalDPAccounting",
    "LocalDPSGD",
    "PrivacyAccountant",
    "PrivacyBudget",
    "PrivacyMechanism",
    "Sampling",
    "SecureAggregation",
    "SecureAggregationOverflow",
    "calibrate_noise_multiplier",
    "clip_by_norm",
    "compute_epsilon",
    "sampling_of",
]

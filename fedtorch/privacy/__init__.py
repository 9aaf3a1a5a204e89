"""Privacy and security as update transforms that compose with every strategy.

CentralDP / DPClip      user-level DP-FedAvg, fixed or adaptive clipping (central.py)
DPSGDTrainer            sample-level DP-SGD on every client (dpsgd.py)
LocalDPAccounting       per-client accounting of local DP-SGD (dpsgd.py)
PrivacyAccountant       (epsilon, delta) by Google's dp-accounting library (accounting.py)
PrivacyBudget           stop before the target epsilon; epsilon into the summary (budget.py)
SecureAggregation       Bonawitz et al. 2017 masking with dropout recovery, simulated (secagg.py)
build_privacy           privacy options (none / central / local) -> the objects above (factory.py)
"""

from fedtorch.privacy.accounting import (
    PrivacyAccountant,
    Sampling,
    calibrate_noise_multiplier,
    compute_epsilon,
    sampling_of,
)
from fedtorch.privacy.budget import PrivacyBudget
from fedtorch.privacy.central import CentralDP, DPClip, clip_by_norm
from fedtorch.privacy.dpsgd import DPSGDTrainer, LocalDPAccounting
from fedtorch.privacy.factory import PrivacyOptionError, PrivacySetup, build_privacy
from fedtorch.privacy.secagg import SecureAggregation

__all__ = [
    "CentralDP",
    "DPClip",
    "DPSGDTrainer",
    "LocalDPAccounting",
    "PrivacyAccountant",
    "PrivacyBudget",
    "PrivacyOptionError",
    "PrivacySetup",
    "Sampling",
    "SecureAggregation",
    "calibrate_noise_multiplier",
    "build_privacy",
    "clip_by_norm",
    "compute_epsilon",
    "sampling_of",
]

"""Attacks: malicious clients as update transforms and data poisoning, composable with every
strategy; the robust reducers in `fedtorch.aggregators` and the defenses in `fedtorch.defenses`
defend.

    SignFlip, GaussianAttack, Scaling   model poisoning (model_poisoning.py)
    LabelFlip, Backdoor                 data poisoning (data_poisoning.py)
    ALIE                                a little is enough (alie.py)              }
    IPM                                 inner-product manipulation (ipm.py)       } full knowledge:
    MinMax, MinSum                      distance-bounded (min_max.py)             } omniscient.py
    FangTrimmedMean, FangKrum           Fang et al.'s attacks (fang.py)           }
    Silent                              attackers whose updates are dropped: the ceiling of any defense
"""

from fedtorch.attacks.alie import ALIE, alie_z_max
from fedtorch.attacks.base import Attack, choose_attackers
from fedtorch.attacks.data_poisoning import Backdoor, LabelFlip, stamp_trigger, with_client_samples
from fedtorch.attacks.fang import FangKrum, FangTrimmedMean
from fedtorch.attacks.ipm import IPM
from fedtorch.attacks.min_max import MinMax, MinSum
from fedtorch.attacks.model_poisoning import GaussianAttack, Scaling, SignFlip
from fedtorch.attacks.omniscient import OmniscientAttack
from fedtorch.attacks.silent import Silent

__all__ = [
    "ALIE",
    "IPM",
    "Attack",
    "Backdoor",
    "FangKrum",
    "FangTrimmedMean",
    "GaussianAttack",
    "LabelFlip",
    "MinMax",
    "MinSum",
    "OmniscientAttack",
    "Scaling",
    "Silent",
    "SignFlip",
    "alie_z_max",
    "choose_attackers",
    "stamp_trigger",
    "with_client_samples",
]

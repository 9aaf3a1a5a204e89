"""Defenses against Byzantine clients that survive heterogeneous (non-IID) data, built on the
reducers of `fedtorch.aggregators`; each is an `Aggregator`, so it composes with every strategy
(the FedOpt server optimizers, client momentum) through `strategy.aggregator`.

    Bucketing               random buckets of s averaged before a robust reducer   (Karimireddy et al. 2022)
    NearestNeighborMixing   each update -> mean of its n - f nearest, then a reducer (Allouah et al. 2023)
    CenteredClipping        clip around the previous aggregate                      (Karimireddy et al. 2021)
    NormBounding            clip each update to norm M, then the mean               (Sun et al. 2019)
    FLTrust                 trust by cosine to the server's root-data update        (Cao et al. 2021)
"""

from fedtorch.defenses.bucketing import Bucketing
from fedtorch.defenses.centered_clipping import CenteredClipping
from fedtorch.defenses.fltrust import FLTrust, RootDataset, RootUpdate, attach_root_dataset, draw_root_dataset
from fedtorch.defenses.nnm import NearestNeighborMixing
from fedtorch.defenses.norm_bounding import NormBounding
from fedtorch.defenses.pre_aggregation import PreAggregation

__all__ = [
    "Bucketing",
    "CenteredClipping",
    "FLTrust",
    "NearestNeighborMixing",
    "NormBounding",
    "PreAggregation",
    "RootDataset",
    "RootUpdate",
    "attach_root_dataset",
    "draw_root_dataset",
]

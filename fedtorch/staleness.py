"""Staleness: how much an update trained from an old model counts, as a transform of the aggregation.

An asynchronous server steps while clients train, so an update arrives computed from the model
version its client downloaded, tau, while the server is at version t. Its *staleness* is t - tau,
the number of server steps since the download. Both asynchronous methods damp stale updates by a
staleness function s:

    FedAsync (Xie, Koyejo and Gupta 2019, "Asynchronous Federated Optimization", Section 5.2):
        constant     s(t - tau) = 1
        polynomial   s_a(t - tau) = (t - tau + 1)^(-a)
        hinge        s_{a,b}(t - tau) = 1 if t - tau <= b, else 1 / (a (t - tau - b) + 1)
    FedBuff (Nguyen et al. 2022, "Federated Learning with Buffered Asynchronous Aggregation"):
        s(t - tau) = 1 / sqrt(1 + t - tau), the polynomial with a = 1/2.

`StalenessWeighting` is the update transform that applies it, server side (after every
client-side transform: attacks, compression, DP clipping; before the byte meter):

    FedBuff    delta_k  ->  s(t - tau_k) * delta_k                     (buffer mean, any optimizer)
    FedAsync   delta_k  ->  alpha * s(t - tau_k) * (x_tau + delta_k - x_{t-1})

FedAsync mixes the client's model into the *current* one, x_t = (1 - alpha_t) x_{t-1} +
alpha_t x_new with alpha_t = alpha * s(t - tau) and x_new = x_tau + delta_k; in delta form that is
the server step x_t = x_{t-1} + alpha_t (x_new - x_{t-1}), i.e. the rebased delta above with
FedAvg's SGD(lr=1). FedBuff instead averages the deltas relative to the downloaded models (FLSim's
"fed_buff_aggregation"). The server tells the transform each update's staleness (and, for
FedAsync, its drift x_tau - x_{t-1}) just before the update enters the pipeline (`expect`).
A fresh update (staleness 0, no drift) is multiplied by exactly 1.0, so it passes bit for bit.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from fedtorch.client import ClientUpdate
from fedtorch.errors import OptionError, check_choice, check_number
from fedtorch.pipeline import StepRecord, UpdateTransform

KINDS = ("constant", "polynomial", "hinge")


class StalenessFunction:
    """s(staleness) for staleness = t - tau >= 0 (Xie et al. 2019, Section 5.2).

    Args:
        kind: "constant", "polynomial" or "hinge".
        a: the polynomial's exponent (FedBuff: 0.5), or the hinge's slope; >= 0.
        b: the hinge's threshold: updates at most b steps stale count fully; >= 0.
    """

    def __init__(self, kind: str = "polynomial", a: float = 0.5, b: float = 0.0) -> None:
        self.kind = check_choice("server.staleness.kind", kind, KINDS)
        self.a = check_number("server.staleness.a", a, 0.0)
        self.b = check_number("server.staleness.b", b, 0.0)

    def __call__(self, staleness: int) -> float:
        if staleness < 0:
            raise ValueError(f"staleness {staleness} < 0")
        if self.kind == "constant":
            return 1.0
        if self.kind == "polynomial":
            return float((staleness + 1.0) ** (-self.a))
        if staleness <= self.b:
            return 1.0
        return 1.0 / (self.a * (staleness - self.b) + 1.0)

    def __repr__(self) -> str:
        return f"StalenessFunction(kind={self.kind!r}, a={self.a:g}, b={self.b:g})"


def staleness_function(spec: Any) -> StalenessFunction:
    """A `StalenessFunction` from config: an instance, or a mapping {kind, a, b}."""
    if isinstance(spec, StalenessFunction):
        return spec
    if not hasattr(spec, "get"):
        raise OptionError("server.staleness", spec, "{kind: constant|polynomial|hinge, a: ..., b: ...}")
    unknown = sorted(set(spec) - {"kind", "a", "b"})
    if unknown:
        raise OptionError(f"server.staleness.{unknown[0]}", spec[unknown[0]], "kind, a and b")
    return StalenessFunction(spec.get("kind", "polynomial"), spec.get("a", 0.5), spec.get("b", 0.0))


class StalenessWeighting(UpdateTransform):
    """Damps each arriving update by alpha * s(staleness); FedAsync also rebases it on the current model.

    Args:
        function: s.
        alpha: FedAsync's mixing weight in (0, 1]; 1 for FedBuff.
        rebase: True for FedAsync's mixing (the delta is taken against the current model).
    """

    group = "server"

    def __init__(self, function: StalenessFunction, alpha: float = 1.0, rebase: bool = False) -> None:
        self.function = function
        self.alpha = check_number("server.alpha", alpha, 0.0, 1.0, low_open=True)
        self.rebase = bool(rebase)
        self._expected: dict[int, tuple[int, Tensor | None]] = {}

    def expect(self, client_id: int, staleness: int, drift: Tensor | None = None) -> None:
        """The next update of `client_id` is `staleness` steps stale (its drift x_tau - x_{t-1})."""
        self._expected[int(client_id)] = (int(staleness), drift)

    def weight(self, staleness: int) -> float:
        """alpha * s(staleness): the factor an update of that staleness is multiplied by."""
        return self.alpha * self.function(staleness)

    def on_update(self, update: ClientUpdate, record: StepRecord) -> ClientUpdate:
        staleness, drift = self._expected.pop(update.client_id)
        factor = self.weight(staleness)
        delta = update.delta
        if self.rebase and drift is not None:
            delta = delta + drift.to(delta)
        if factor != 1.0:
            delta = delta * factor
        update.delta = delta
        return update

"""Which parameters leave a client: selectors resolved against real models, masks, and the byte
meter and the compressors counting and encoding only what an update sends."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedtorch.client import ClientUpdate
from fedtorch.compression import QSGD, CommunicationMeter, TopK
from fedtorch.errors import OptionError
from fedtorch.models import BNCNN, MLP
from fedtorch.params import FlatModel
from fedtorch.pipeline import PipelineContext, StepRecord
from fedtorch.sharing import ParameterSet, body_set, head_set, module_types


def _resolve(model: nn.Module, selection: ParameterSet):
    return selection.resolve(FlatModel(model).layout, module_types(model))


def test_selectors_on_a_batch_norm_cnn():
    model = BNCNN((1, 28, 28), 10)
    norm = _resolve(model, ParameterSet(include=("norm",)))
    # Affine parameters and running statistics of the three BatchNorm layers, nothing else.
    expected = {
        f"features.{i}.{name}" for i in (1, 5, 10) for name in ("weight", "bias", "running_mean", "running_var")
    }
    assert set(norm.names) == expected
    assert norm.size == 2 * (16 + 32 + 128) * 2
    head = _resolve(model, head_set(None))
    assert head.names == ("classifier.weight", "classifier.bias")
    body = _resolve(model, body_set(None))
    assert set(body.names) | set(head.names) == set(FlatModel(BNCNN((1, 28, 28), 10)).layout.names)
    assert not set(body.names) & set(head.names)
    assert torch.equal(body.mask, ~head.mask) and body.size + head.size == FlatModel(model).layout.size
    no_norm = _resolve(model, ParameterSet(exclude=("norm",)))
    assert torch.equal(no_norm.mask, ~norm.mask)


def test_prefixes_match_whole_name_components_and_bad_ones_say_so():
    model = nn.Sequential(*[nn.Linear(2, 2) for _ in range(11)])  # names 0.weight ... 10.bias
    one = _resolve(model, ParameterSet(include=("1",)))
    assert one.names == ("1.weight", "1.bias")  # not 10.*
    with pytest.raises(OptionError, match=r"strategy\.head='nope' is invalid"):
        _resolve(model, head_set(["nope"]))
    with pytest.raises(OptionError, match="module types"):
        ParameterSet(include=("norm",)).resolve(FlatModel(model).layout, None)


def test_adapters_selector_follows_the_lora_naming_convention():
    class WithAdapter(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.base = nn.Linear(4, 4)
            self.lora_A = nn.Parameter(torch.zeros(2, 4))
            self.block = nn.Module()
            self.block.adapter_up = nn.Linear(2, 4)

    selected = _resolve(WithAdapter(), ParameterSet(include=("adapters",)))
    assert set(selected.names) == {"lora_A", "block.adapter_up.weight", "block.adapter_up.bias"}


def test_take_and_put_round_trip_and_keep_only_zeroes_the_rest():
    model = MLP((6,), 3, hidden=(5,))
    head = _resolve(model, head_set(None))
    vector = torch.arange(FlatModel(model).layout.size, dtype=torch.float32)
    values = head.take(vector)
    assert values.numel() == head.size == 5 * 3 + 3
    assert torch.equal(head.put(torch.zeros_like(vector), values)[head.mask], values)
    kept = head.keep_only(vector.clone())
    assert torch.equal(kept[head.mask], values) and not kept[~head.mask].any()


def _meter(size: int) -> CommunicationMeter:
    layout = FlatModel(nn.Linear(size - 1, 1)).layout  # size values
    meter = CommunicationMeter()
    meter.setup(
        PipelineContext(layout, 1, None, torch.device("cpu"), torch.float32, 0, 1, 1.0, 1.0, lambda u: 1.0, 1.0, 1.0)
    )
    return meter


def test_the_meter_counts_only_the_sent_values_up_and_down():
    meter = _meter(10)
    sent = torch.zeros(10, dtype=torch.bool)
    sent[:4] = True
    record = StepRecord(1, (0, 1), download_bytes=10 * 4 + 8)  # the model and an 8-byte payload
    meter.begin(record)
    meter.on_update(ClientUpdate(0, torch.ones(10), 1, 1, sent=sent), record)  # shares 4 of 10 values
    meter.on_update(ClientUpdate(1, torch.ones(10), 1, 1), record)  # shares everything
    metrics = meter.step_metrics()
    assert metrics["comm/bytes_up"] == 4 * 4 + 10 * 4
    assert metrics["comm/bytes_down"] == (4 * 4 + 8) + (10 * 4 + 8)


@pytest.mark.parametrize("compressor", [TopK(density=0.5, error_feedback=True), QSGD(bits=4, bucket_size=None)])
def test_a_compressor_encodes_only_the_sent_values(compressor):
    generator = torch.Generator().manual_seed(0)
    delta = torch.randn(20, generator=generator)
    sent = torch.zeros(20, dtype=torch.bool)
    sent[5:13] = True
    delta[~sent] = 0
    compressor.setup(type("C", (), {"seed": 0, "dtype": torch.float32})())
    update = compressor.on_update(ClientUpdate(3, delta.clone(), 1, 1, sent=sent), StepRecord(1, (3,)))
    assert not update.delta[~sent].any()  # nothing outside the shared set is reconstructed
    alone = type(compressor)(**({"density": 0.5} if isinstance(compressor, TopK) else {"bits": 4, "bucket_size": None}))
    alone.setup(type("C", (), {"seed": 0, "dtype": torch.float32})())
    reference = alone.on_update(ClientUpdate(3, delta[sent].clone(), 1, 1), StepRecord(1, (3,)))
    # The same as compressing the 8 shared values alone: same payload size, same decoded values.
    assert int(update.metrics["bytes_up"]) == int(reference.metrics["bytes_up"])
    assert torch.equal(update.delta[sent], reference.delta)
    if isinstance(compressor, TopK):
        assert int(update.metrics["bytes_up"]) == 4 * (4 + 4)  # ceil(0.5 * 8) values and indices
        assert compressor.residuals[3].numel() == 8

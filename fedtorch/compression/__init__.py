"""Communication: compressors of client updates and the byte meter every run carries.

TopK                 top-k sparsification with error feedback (topk.py)
QSGD                 unbiased b-bit stochastic quantization (qsgd.py)
CommunicationMeter   comm/bytes_up, comm/bytes_down and totals, always on (meter.py)
"""

from fedtorch.compression.base import Compressor, payload_bytes
from fedtorch.compression.meter import CommunicationMeter
from fedtorch.compression.qsgd import QSGD, pack_bits, unpack_bits
from fedtorch.compression.topk import TopK

__all__ = ["QSGD", "CommunicationMeter", "Compressor", "TopK", "pack_bits", "payload_bytes", "unpack_bits"]

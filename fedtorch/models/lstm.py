"""The Shakespeare character LSTM of McMahan et al. 2017 and LEAF.

McMahan et al. 2017 ("Communication-Efficient Learning of Deep Networks from Decentralized Data"):
"The model takes a series of characters as input and embeds each of these into a learned 8
dimensional space. The embedded characters are then processed through 2 LSTM layers, each with 256
nodes. Finally the output of the second LSTM layer is sent to a softmax output layer with one node
per character." LEAF's reference model (models/shakespeare/stacked_lstm.py) is the same network over
its 80-character vocabulary, predicting from the last of 80 positions.

Parameter counts for an 80-character vocabulary: 819,920 here, 817,872 in LEAF's TensorFlow model;
the difference is PyTorch's second LSTM bias vector (b_ih and b_hh: 2 x 4 x 256 per layer). The paper
quotes 866,578, which this architecture does not reach for any whole vocabulary size (the count is
796,672 + 265 V in TensorFlow), so its model must have differed in some unstated detail.
"""

from __future__ import annotations

from torch import Tensor, nn


class CharLSTM(nn.Module):
    """Embedding(V, 8) -> 2-layer LSTM(256) -> Linear(256, V) on the last position's output.

    Args:
        input_shape: (sequence_length,) of int64 character ids (only used for validation).
        num_classes: size of the output vocabulary (80 for LEAF's characters).
        vocab_size: size of the input vocabulary; defaults to `num_classes` (same characters in and out).
        embedding_dim, hidden_size, num_layers: 8, 256, 2 in the paper.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int | None,
        vocab_size: int | None = None,
        embedding_dim: int = 8,
        hidden_size: int = 256,
        num_layers: int = 2,
    ) -> None:
        super().__init__()
        if len(tuple(input_shape)) != 1:
            raise ValueError(f"model=char_lstm needs token sequences (length,), got input_shape={tuple(input_shape)}")
        if num_classes is None:
            raise ValueError("model=char_lstm predicts a character; the dataset has no num_classes")
        self.embedding = nn.Embedding(vocab_size or num_classes, embedding_dim)
        self.lstm = nn.LSTM(embedding_dim, hidden_size, num_layers=num_layers, batch_first=True)
        self.head = nn.Linear(hidden_size, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.lstm(self.embedding(x))
        return self.head(out[:, -1])

    def features(self, x: Tensor) -> Tensor:
        """The last position's LSTM output (`fedtorch.models.protocol`)."""
        out, _ = self.lstm(self.embedding(x))
        return out[:, -1]

    def classifier(self, z: Tensor) -> Tensor:
        return self.head(z)

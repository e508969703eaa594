"""Recurrent layers: torch.nn.GRU (batch-first) on pyattn's packed GEMM and fused gate kernel."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Optional, Tuple

import numpy as np

from .. import _core
from .. import functional as F
from .layers import Module, as_weight


class GRU(Module):
    """A multi-layer, optionally bidirectional GRU with torch.nn.GRU's weights and semantics (batch_first=True;
    inference: dropout between layers does nothing).

    `weights` maps PyTorch's state_dict names -- weight_ih_l{k}, weight_hh_l{k}, bias_ih_l{k}, bias_hh_l{k}, and
    the same with the suffix _reverse for the backward direction -- to arrays, gates in PyTorch's order (r, z, n).
    Each layer's input projection for the whole sequence is one GEMM; each step is one packed GEMM of the batch's
    states plus the fused gate kernel, with the GIL released for the whole sequence.
    """

    def __init__(self, weights: Mapping, name: str = "gru"):
        self._name = name
        if "weight_ih_l0" not in weights:
            raise ValueError(f"{name}: no 'weight_ih_l0' among the weights (expected torch.nn.GRU state_dict names)")
        self.num_layers = 0
        while f"weight_ih_l{self.num_layers}" in weights:
            self.num_layers += 1
        self.bidirectional = "weight_ih_l0_reverse" in weights
        directions = ("", "_reverse") if self.bidirectional else ("",)
        self.weights = {}
        self._layers = []
        for k in range(self.num_layers):
            row = []
            for sfx in directions:
                names = [f"{p}_l{k}{sfx}" for p in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
                if names[0] not in weights or names[1] not in weights:
                    raise ValueError(f"{name}: missing '{names[0]}' or '{names[1]}'")
                w = [as_weight(weights[n], f"{name}.{n}") if n in weights else None for n in names]
                if w[1].ndim != 2 or w[1].shape[0] != 3 * w[1].shape[1]:
                    raise ValueError(f"{name}.{names[1]} has shape {w[1].shape}, expected (3 * hidden, hidden)")
                try:
                    row.append(_core.GRULayer(*w))
                except ValueError as e:
                    raise ValueError(f"{name} layer {k}{sfx}: {e}") from None
                self.weights.update({n: a for n, a in zip(names, w) if a is not None})
            self._layers.append(row)
        self.hidden_size = self._layers[0][0].hidden_size
        self.input_size = self._layers[0][0].input_size
        width = self.hidden_size * len(directions)
        for k in range(1, self.num_layers):
            if self._layers[k][0].input_size != width:
                raise ValueError(
                    f"{name}: layer {k} takes {self._layers[k][0].input_size} inputs, layer {k - 1} gives {width}"
                )
        unused = set(weights) - set(self.weights)
        if unused:
            raise ValueError(f"{name}: unexpected weights {sorted(unused)[:5]}")

    @classmethod
    def from_torch(cls, gru) -> GRU:
        """From a torch.nn.GRU (batch_first=True)."""
        if not getattr(gru, "batch_first", False):
            raise ValueError(
                "pyattn's GRU is batch-first: build the torch.nn.GRU with batch_first=True (the weights "
                "are the same; transpose your inputs)"
            )
        return cls({k: v.detach().cpu().numpy() for k, v in gru.state_dict().items()})

    def named_weights(self, prefix: str = ""):
        for n, a in self.weights.items():
            yield prefix + n, a

    def __call__(self, x, h0: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
        """x (batch, seq, input_size); h0 (num_layers * directions, batch, hidden) or None (zeros).
        Returns (output (batch, seq, directions * hidden) of the last layer, h_n (num_layers * directions,
        batch, hidden)) -- what torch.nn.GRU(batch_first=True) returns."""
        x = np.asarray(x)
        if x.dtype.kind != "f":
            raise TypeError(f"{self._name}: expected a floating-point input, got {x.dtype}")
        x = F._c_aligned(x, np.float32)
        if x.ndim != 3 or x.shape[2] != self.input_size or 0 in x.shape:
            raise ValueError(f"{self._name}: expected input of shape (batch, seq, {self.input_size}), got {x.shape}")
        D = 2 if self.bidirectional else 1
        B = x.shape[0]
        if h0 is not None:
            h0 = F._c_aligned(h0, np.float32)
            if h0.shape != (self.num_layers * D, B, self.hidden_size):
                raise ValueError(
                    f"{self._name}: expected h0 of shape {(self.num_layers * D, B, self.hidden_size)}, got {h0.shape}"
                )
        finals = []
        for k, row in enumerate(self._layers):
            outs = []
            for d, layer in enumerate(row):
                out, h = layer(x, None if h0 is None else h0[k * D + d], reverse=d == 1)
                outs.append(out)
                finals.append(h)
            x = outs[0] if D == 1 else np.concatenate(outs, axis=-1)
        return x, np.stack(finals)

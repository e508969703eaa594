"""Attention heat maps: which source tokens each target token attended to.

Needs matplotlib (``pip install matplotlib``, or the ``plot`` extra: ``pip install pyattn[plot]``); it is
imported only when a plot is drawn, so ``import pyattn`` never needs it. No pyplot state is touched: the
figure is a standalone ``matplotlib.figure.Figure``, shown in notebooks and saved with ``path=``.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ._checks import is_int

__all__ = ["attention"]

_CELL_INCHES = 0.3  # one token's row / column
_DPI = 100


def _matplotlib():
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError("pyattn.plot needs matplotlib: pip install matplotlib (or pip install 'pyattn[plot]')") from e
    return Figure


def _index(i, n: int, name: str, shape) -> int:
    if not is_int(i):
        raise TypeError(f"{name} must be an int, got {type(i).__name__}")
    if not -n <= i < n:
        raise IndexError(f"{name} {i} is out of range for weights of shape {shape}")
    return int(i) % n


def _matrix(weights, batch: int, head: Optional[int]):
    """The (Lt, Ls) matrix to draw, and a description of where it came from (for the default title)."""
    if hasattr(weights, "detach") and hasattr(weights, "cpu"):  # a torch tensor
        weights = weights.detach().cpu().numpy()
    w = np.asarray(weights)
    if w.dtype.kind not in "fiub":
        raise TypeError(f"expected numeric attention weights, got {w.dtype}")
    shape = w.shape
    if w.ndim not in (2, 3, 4):
        raise ValueError(f"expected weights of shape (Lt, Ls), (B, Lt, Ls) or (B, H, Lq, Lk), got {shape}")
    if head is not None and w.ndim != 4:
        raise ValueError(f"head selects one head of (B, H, Lq, Lk) weights; got weights of shape {shape}")
    if 0 in shape:
        raise ValueError(f"weights have a zero-length dimension: {shape}")
    where = ""
    if w.ndim >= 3:
        b = _index(batch, shape[0], "batch", shape)
        w = w[b]
        where = f"batch {b}" if shape[0] > 1 else ""
    if w.ndim == 3:
        if head is None:
            w = w.mean(axis=0)
            where += f"{', ' if where else ''}mean over {shape[1]} heads"
        else:
            h = _index(head, shape[1], "head", shape)
            w = w[h]
            where += f"{', ' if where else ''}head {h}"
    return np.asarray(w, dtype=np.float64), where


def _labels(tokens, n: int, name: str, axis: str) -> Optional[list]:
    if tokens is None:
        return None
    if isinstance(tokens, str):
        raise TypeError(f"{name} must be a sequence of tokens, not one string (use {name}=text.split())")
    tokens = [str(t) for t in tokens]
    if len(tokens) != n:
        raise ValueError(f"{name} has {len(tokens)} tokens but the weights have {n} {axis}")
    return tokens


def attention(
    weights,
    src_tokens: Optional[Sequence] = None,
    tgt_tokens: Optional[Sequence] = None,
    path=None,
    *,
    title: Optional[str] = None,
    batch: int = 0,
    head: Optional[int] = None,
    ax=None,
):
    """Draws attention weights as a heat map: rows = target (query) tokens, columns = source (key) tokens,
    with a colour bar.

    weights: (Lt, Ls); (B, Lt, Ls) -- entry ``batch`` is drawn; or a transformer's (B, H, Lq, Lk) --
    ``head`` picks one head, None averages over the heads. Numpy arrays or torch tensors.
    src_tokens / tgt_tokens: labels of the columns / rows (their lengths must match, else ValueError).
    path: if given, the figure is saved there as PNG (figure size x dpi pixels).
    ax: an existing matplotlib Axes to draw into (its figure gets the colour bar); by default a new Figure.
    Returns the matplotlib Figure.
    """
    Figure = _matplotlib()
    w, where = _matrix(weights, batch, head)
    Lt, Ls = w.shape
    xlabels = _labels(src_tokens, Ls, "src_tokens", "source columns (the last axis)")
    ylabels = _labels(tgt_tokens, Lt, "tgt_tokens", "target rows (the second-to-last axis)")
    if ax is None:
        width = min(max(2.5 + _CELL_INCHES * Ls, 4.0), 16.0)  # room for the labels and the colour bar
        height = min(max(1.5 + _CELL_INCHES * Lt, 3.0), 16.0)
        fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")  # labels stay inside
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    im = ax.imshow(w, cmap="viridis", aspect="auto", interpolation="nearest")
    fig.colorbar(im, ax=ax)
    ax.set_xlabel("source")
    ax.set_ylabel("target")
    if xlabels is not None:
        ax.set_xticks(np.arange(Ls), xlabels, rotation=90)
    if ylabels is not None:
        ax.set_yticks(np.arange(Lt), ylabels)
    if title is not None or where:
        ax.set_title(title if title is not None else where)
    if path is not None:
        fig.savefig(path, format="png", dpi=fig.dpi)
    return fig

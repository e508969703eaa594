"""Single-head attention with the classic score functions (Luong et al. 2015; Bahdanau et al. 2015), the
attention of RNN encoder-decoders: one module holding the weights of any score function, whose key side
is computed once per source (`prepare`) and reused at every decoding step."""

from __future__ import annotations

from typing import Optional

import numpy as np

from .. import _core
from .. import functional as F
from .layers import Linear, Module, as_weight


def _numpy(x):
    """Weights may come as numpy arrays or as PyTorch tensors / parameters (detached, moved to the CPU)."""
    if x is not None and hasattr(x, "detach") and hasattr(x, "cpu"):
        return x.detach().cpu().numpy()
    return x


class PreparedKeys:
    """Keys made ready for one `Attention` module (see `Attention.prepare`).

    keys       (B, Lk, Dk) float32: the keys as given, also the default values
    projected  the key side of the score (None for dot / scaled_dot): W_k k + b_k (additive, (B, Lk, H)),
               W[:, Dq:] k (concat), k W^T (general, (B, Lk, Dq)), k / |k| (cosine)
    unbatched  the keys were given as (Lk, Dk)
    """

    __slots__ = ("keys", "projected", "unbatched", "_owner")

    def __init__(self, keys: np.ndarray, projected: Optional[np.ndarray], unbatched: bool, owner: Attention):
        self.keys, self.projected, self.unbatched, self._owner = keys, projected, unbatched, owner

    @property
    def batch_size(self) -> int:
        return self.keys.shape[0]

    @property
    def num_keys(self) -> int:
        return self.keys.shape[1]


class Attention(Module):
    """softmax(score(query, keys) + mask) @ values for any score function of
    :func:`pyattn.functional.attention_scores`: dot, scaled_dot, cosine, general, concat, additive.

    Weights (numpy arrays, or PyTorch tensors), as in attention_scores:
        Attention("dot"); Attention("scaled_dot", scale=None); Attention("cosine")
        Attention("general", w=W)                         # q^T W k, W (Dq, Dk)
        Attention("concat", w=W, b=b, v=v, v_bias=0.0)    # v^T tanh(W [q; k] + b), W (H, Dq + Dk)
        Attention("additive", w_q=..., b_q=..., w_k=..., b_k=..., v=..., v_bias=0.0)
    or from the PyTorch seq2seq tutorial's modules: `Attention.bahdanau(...)`, `Attention.luong(...)`.
    The projections run on prepacked weights (`Linear`). For concat, ``query_dim`` says where W splits into its
    query and key halves (default: in the middle).

    Decoding: ``prepared = attn.prepare(encoder_outputs)`` once per source, then ``attn(query, prepared)``
    at every step: the keys are projected once, not once per step.
    """

    def __init__(
        self,
        score: str = "dot",
        *,
        w=None,
        w_q=None,
        b_q=None,
        w_k=None,
        b_k=None,
        v=None,
        v_bias: float = 0.0,
        b=None,
        scale: Optional[float] = None,
        query_dim: Optional[int] = None,
        name: str = "attention",
    ):
        score = F._check_score(score)
        w, w_q, b_q, w_k, b_k, v, b, v_bias = map(_numpy, (w, w_q, b_q, w_k, b_k, v, b, v_bias))
        v_bias = F._v_bias(v_bias)
        F._check_unused(
            score,
            {
                "w": w,
                "w_q": w_q,
                "b_q": b_q,
                "w_k": w_k,
                "b_k": b_k,
                "v": v,
                "b": b,
                "scale": scale,
                "v_bias": v_bias or None,
            },
        )
        if query_dim is not None and score != "concat":
            raise ValueError(f"query_dim is for score='concat' (where W splits), not {score!r}")
        self.score = score
        self.v_bias = v_bias
        self.scale = None if scale is None else F._scale(scale)
        self._name = name
        self._q_proj = self._k_proj = None
        if score == "general":
            self.w = as_weight(w, f"{name}.w")
            if self.w.ndim != 2:
                raise ValueError(f"weight {name}.w must be 2-D (Dq, Dk), got {self.w.shape}")
            self._k_proj = Linear(self.w, name=f"{name}.w")  # k -> k W^T (B, Lk, Dq)
        elif score == "concat":
            self.w = as_weight(w, f"{name}.w")
            if self.w.ndim != 2 or self.w.shape[1] < 2:
                raise ValueError(f"weight {name}.w must be 2-D (H, Dq + Dk), got {self.w.shape}")
            H, total = self.w.shape
            if query_dim is None:
                if total % 2:
                    raise ValueError(
                        f"weight {name}.w {self.w.shape} has an odd number of columns: pass query_dim "
                        f"(Dq) to say where its query and key halves meet"
                    )
                query_dim = total // 2
            if not 0 < query_dim < total:
                raise ValueError(f"query_dim must be in [1, {total - 1}] for w {self.w.shape}, got {query_dim}")
            self.b = None if b is None else as_weight(b, f"{name}.b", (H,))
            self.v = as_weight(v, f"{name}.v", (H,))
            self._q_proj = Linear(self.w[:, :query_dim], self.b, name=f"{name}.w[:, :Dq]")
            self._k_proj = Linear(self.w[:, query_dim:], name=f"{name}.w[:, Dq:]")
        elif score == "additive":
            self.w_q = as_weight(w_q, f"{name}.w_q")
            if self.w_q.ndim != 2:
                raise ValueError(f"weight {name}.w_q must be 2-D (H, Dq), got {self.w_q.shape}")
            H = self.w_q.shape[0]
            self.w_k = as_weight(w_k, f"{name}.w_k")
            if self.w_k.ndim != 2 or self.w_k.shape[0] != H:
                raise ValueError(
                    f"weight {name}.w_k must be (H, Dk) with H = {H} (from w_q {self.w_q.shape}), got {self.w_k.shape}"
                )
            self.b_q = None if b_q is None else as_weight(b_q, f"{name}.b_q", (H,))
            self.b_k = None if b_k is None else as_weight(b_k, f"{name}.b_k", (H,))
            self.v = as_weight(v, f"{name}.v", (H,))
            self._q_proj = Linear(self.w_q, self.b_q, name=f"{name}.w_q")
            self._k_proj = Linear(self.w_k, self.b_k, name=f"{name}.w_k")

    # -------------------------------------------------------------------------------------------------
    @classmethod
    def bahdanau(
        cls, Wa_weight, Wa_bias, Ua_weight, Ua_bias, Va_weight, Va_bias=None, name: str = "bahdanau"
    ) -> Attention:
        """From the PyTorch seq2seq tutorial's ``BahdanauAttention``: ``Wa = Linear(H, H)`` on the query,
        ``Ua = Linear(H, H)`` on the keys, ``Va = Linear(H, 1)``; scores = Va(tanh(Wa(query) + Ua(keys))).
        E.g. ``Attention.bahdanau(m.Wa.weight, m.Wa.bias, m.Ua.weight, m.Ua.bias, m.Va.weight, m.Va.bias)``."""
        va = np.asarray(_numpy(Va_weight)) if Va_weight is not None else None
        if va is None or va.ndim not in (1, 2) or (va.ndim == 2 and va.shape[0] != 1):
            raise ValueError(
                f"Va_weight must be the (1, H) weight of Va = Linear(H, 1), got {None if va is None else va.shape}"
            )
        v_bias = 0.0
        if Va_bias is not None:
            vb = np.asarray(_numpy(Va_bias))
            if vb.size != 1:
                raise ValueError(f"Va_bias must be the (1,) bias of Va = Linear(H, 1), got {vb.shape}")
            v_bias = float(vb.reshape(()))
        return cls(
            "additive",
            w_q=Wa_weight,
            b_q=Wa_bias,
            w_k=Ua_weight,
            b_k=Ua_bias,
            v=va.reshape(-1),
            v_bias=v_bias,
            name=name,
        )

    @classmethod
    def luong(cls, kind: str, W=None, name: str = "luong") -> Attention:
        """Luong et al. (2015) global attention: ``kind="dot"`` (h_t . h_s) or ``"general"`` (h_t^T W h_s, W the
        (H, H) weight of a bias-free ``Linear`` applied to the encoder states). For "concat" use
        ``Attention("concat", w=..., v=...)``."""
        if kind == "dot":
            if W is not None:
                raise ValueError("Luong 'dot' attention has no weight; got W")
            return cls("dot", name=name)
        if kind == "general":
            if W is None:
                raise ValueError("Luong 'general' attention needs W (the (H, H) weight of its Linear)")
            return cls("general", w=W, name=name)
        raise ValueError(
            f"kind must be 'dot' or 'general', got {kind!r} (for concat: Attention('concat', w=..., v=...))"
        )

    # -------------------------------------------------------------------------------------------------
    def prepare(self, keys) -> PreparedKeys:
        """The keys (B, Lk, Dk) or (Lk, Dk) with their score-side projection computed once: pass the result
        instead of the keys to every call for the same source."""
        keys = F._as_float32(_numpy(keys), "keys")
        unbatched = keys.ndim == 2
        keys = F._c_aligned(F._rows3(keys, "keys", "(B, Lk, Dk)", unbatched))
        if self._k_proj is not None:
            if keys.shape[2] != self._k_proj.in_features:
                raise ValueError(
                    f"{self._name}: expected keys of width {self._k_proj.in_features} (from the "
                    f"weights), got {keys.shape[1:] if unbatched else keys.shape}"
                )
            projected = self._k_proj(keys)
        elif self.score == "cosine":
            projected = F._unit_rows(keys)
        else:
            projected = None
        return PreparedKeys(keys, projected, unbatched, self)

    def __call__(
        self,
        query,
        keys_or_prepared,
        values=None,
        *,
        key_padding_mask=None,
        hard: bool = False,
        need_weights: bool = True,
    ):
        """query (B, Lq, Dq) (Bahdanau's decoder: (B, 1, H)), keys (B, Lk, Dk) or ``prepare(keys)``, values
        (B, Lk, Dv) -- by default the keys. Unbatched (L, D) arrays work too. key_padding_mask (B, Lk): bool
        True = padding, or float added to the scores. ``hard``: one-hot weights at the best key.
        Returns (context (B, Lq, Dv), weights (B, Lq, Lk)); weights is None unless need_weights."""
        prepared = keys_or_prepared
        if isinstance(prepared, PreparedKeys):
            if prepared._owner is not self:
                raise ValueError(f"{self._name}: these keys were prepared by another Attention module")
        else:
            prepared = self.prepare(keys_or_prepared)
        unbatched = prepared.unbatched
        query = F._as_float32(_numpy(query), "query")
        if query.ndim != (2 if unbatched else 3):
            want = "(Lq, Dq) like the unbatched keys" if unbatched else "(B, Lq, Dq)"
            raise ValueError(f"expected query of shape {want}, got {query.shape}")
        query = F._rows3(query, "query", "(B, Lq, Dq)", unbatched)
        keys = prepared.keys
        B, Lk = keys.shape[:2]
        if query.shape[0] != B:
            raise ValueError(f"query {query.shape} and keys {keys.shape} must have the same batch size")
        s = self._scores(query, prepared)
        vals = keys if values is None else F._values(_numpy(values), B, Lk, unbatched, "values")
        kpm = F._padding_mask(_numpy(key_padding_mask), B, Lk, unbatched)
        context, weights = F._attend(s, vals, None, kpm, bool(hard))
        if unbatched:
            context, weights = context[0], weights[0]
        return context, (weights if need_weights else None)

    def _scores(self, query: np.ndarray, prepared: PreparedKeys) -> np.ndarray:
        """(B, Lq, Lk) scores of query (B, Lq, Dq) against prepared keys."""
        score, keys, kp = self.score, prepared.keys, prepared.projected
        Dq = query.shape[2]
        want_dq = {
            "general": lambda: self.w.shape[0],
            "concat": lambda: self._q_proj.in_features,
            "additive": lambda: self.w_q.shape[1],
        }.get(score, lambda: keys.shape[2])()
        if Dq != want_dq:
            raise ValueError(
                f"{self._name}: expected queries of width {want_dq} (score={score!r}, keys "
                f"{keys.shape}), got {query.shape}"
            )
        inputs = {"query": query, "keys": keys}
        if score in ("dot", "scaled_dot"):
            s = F.matmul(query, keys, transpose_b=True)
            if score == "scaled_dot":
                s *= np.float32(1.0 / np.sqrt(Dq) if self.scale is None else self.scale)
        elif score == "cosine":
            s = F.matmul(F._unit_rows(query), kp, transpose_b=True)
        elif score == "general":
            s = F.matmul(query, kp, transpose_b=True)
        else:
            qp = self._q_proj(query)  # (B, Lq, H)
            s = _core.additive_scores(qp, kp, self.v, self.v_bias)
            inputs["projected queries"] = qp
            inputs["projected keys"] = kp
        return F._check_finite_scores(s, inputs)

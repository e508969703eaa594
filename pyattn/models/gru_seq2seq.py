"""The documents' recurrent translator: a GRU encoder and a GRU decoder with Bahdanau (additive) attention, as in
PyTorch's "NLP from scratch: translation with a sequence to sequence network and attention" tutorial
(EncoderRNN, BahdanauAttention, AttnDecoderRNN), on pyattn's kernels.

Per decoding step: embed the previous token; score the decoder state against every encoder output,
v^T tanh(W_a s + U_a h_j) (U_a h_j projected once per source); softmax; context = weighted sum of the encoder
outputs; GRU on [embedding; context]; output layer; log-softmax. Greedy and beam decoding, and the attention
matrix of every decoded sentence (the figure the documents draw: `pyattn.plot.attention`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import List, NamedTuple, Optional

import numpy as np

from .. import functional as F
from ..generation import search
from ..nn import GRU, Embedding, Linear, Module
from ..nn.layers import as_weight
from ..nn.scoring import Attention
from .pretrained import trims_heap

_KIND = "pyattn-seq2seq-gru-bahdanau"


class Translation(NamedTuple):
    ids: List[List[int]]  # per sentence, without SOS, up to and including EOS when produced
    attentions: List[np.ndarray]  # per sentence, (len(ids), source length): row t = weights of step t
    scores: List[float]  # per sentence, sum of the log-probabilities of its tokens


class GRUState:
    """The recurrent decoder's state: hidden (1, B, H), the source's attention keys (projected once), and per step
    the attention weights (B, S) and log-probabilities (B, vocab), which `Seq2Seq.greedy` reports."""

    def __init__(self, hidden: np.ndarray, memory: np.ndarray, prepare):
        self.hidden, self.memory, self._prepare = hidden, memory, prepare
        self.keys = prepare(memory)
        self.weights: List[np.ndarray] = []
        self.logps: List[np.ndarray] = []

    def reorder(self, index: np.ndarray) -> None:
        index = np.asarray(index, np.int64)
        self.hidden = F._c_aligned(self.hidden[:, index])
        self.memory = F._c_aligned(self.memory[index])
        self.keys = self._prepare(self.memory)
        self.weights = [w[index] for w in self.weights]
        self.logps = [lp[index] for lp in self.logps]


class _GRUDecoder:
    """Seq2Seq under the decoder protocol (pyattn.generation.protocol) -- an adapter, because the model's own
    `step(tokens, hidden, keys)` keeps the tutorial's signature. memory is what `Seq2Seq.encode` returns:
    (encoder outputs, final hidden). The logits it returns are the log-probabilities (same argmax)."""

    def __init__(self, model: GRUSeq2Seq):
        self.model, self.state = model, None

    def init_state(self, batch: int, memory, memory_mask=None) -> GRUState:
        outputs, hidden = memory
        self.state = GRUState(hidden, outputs, self.model.attention.prepare)
        return self.state

    def step(self, ids, positions, state: GRUState, attention_mask=None) -> np.ndarray:
        for t in range(ids.shape[1]):  # a recurrent decoder reads a prompt one token at a time
            lp, state.hidden, w = self.model.step(ids[:, t], state.hidden, state.keys)
            state.weights.append(w)
            state.logps.append(lp)
        return lp


def _sub(weights: Mapping, prefix: str) -> dict:
    return {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}


class GRUSeq2Seq(Module):
    """GRU encoder + Bahdanau attention decoder with the PyTorch tutorial's state_dict names:

    encoder: embedding.weight, gru.* (a torch.nn.GRU, batch_first)
    decoder: embedding.weight, attention.Wa.{weight,bias}, attention.Ua.{weight,bias}, attention.Va.{weight,bias},
             gru.* (input = [embedding; context], 2 x hidden), out.{weight,bias}

    `from_torch(encoder, decoder)` takes the modules themselves; `save(path)` / `load(path)` use safetensors + JSON.
    """

    is_encoder_decoder = True

    def __init__(
        self,
        encoder: Mapping,
        decoder: Mapping,
        *,
        sos_id: int = 0,
        eos_id: int = 1,
        max_length: int = 10,
        source: str = "seq2seq",
    ):
        self.sos_id, self.eos_id, self.max_length = int(sos_id), int(eos_id), int(max_length)
        if self.max_length < 1:
            raise ValueError(f"{source}: max_length must be >= 1, got {max_length}")

        def need(weights, name, part):
            if name not in weights:
                raise ValueError(f"{source}: missing {part} weight '{name}'")
            return weights[name]

        self.src_embedding = Embedding(need(encoder, "embedding.weight", "encoder"), "encoder.embedding")
        self.encoder = GRU(_sub(encoder, "gru."), "encoder.gru")
        self.tgt_embedding = Embedding(need(decoder, "embedding.weight", "decoder"), "decoder.embedding")
        self.attention_weights = {
            n: as_weight(need(decoder, "attention." + n, "decoder"), f"decoder.attention.{n}")
            for n in ("Wa.weight", "Wa.bias", "Ua.weight", "Ua.bias", "Va.weight", "Va.bias")
        }
        self.attention = Attention.bahdanau(*self.attention_weights.values())
        self.decoder = GRU(_sub(decoder, "gru."), "decoder.gru")
        self.out = Linear(need(decoder, "out.weight", "decoder"), decoder.get("out.bias"), "decoder.out")
        H = self.encoder.hidden_size
        if self.encoder.bidirectional or self.decoder.bidirectional:
            raise ValueError(f"{source}: the tutorial's encoder and decoder are unidirectional")
        if self.src_embedding.weight.shape[1] != self.encoder.input_size:
            raise ValueError(
                f"{source}: encoder embedding width {self.src_embedding.weight.shape[1]} != GRU input "
                f"{self.encoder.input_size}"
            )
        E = self.tgt_embedding.weight.shape[1]
        if self.decoder.input_size != E + H or self.decoder.hidden_size != H:
            raise ValueError(
                f"{source}: the decoder GRU must take [embedding ({E}); context ({H})] and hold {H} "
                f"units, has input {self.decoder.input_size} and hidden {self.decoder.hidden_size}"
            )
        if self.decoder.num_layers != 1 or self.encoder.num_layers != 1:
            raise ValueError(
                f"{source}: the tutorial's model has one GRU layer each (the decoder state is the "
                f"attention query), got {self.encoder.num_layers} and {self.decoder.num_layers}"
            )
        wq, wk = self.attention.w_q, self.attention.w_k
        if wq.shape[1] != H or wk.shape[1] != H:
            raise ValueError(
                f"{source}: attention.Wa.weight {wq.shape} and attention.Ua.weight {wk.shape} must read "
                f"the {H} features of the GRU states"
            )
        if self.out.in_features != H:
            raise ValueError(f"{source}: out layer takes {self.out.in_features} features, the decoder gives {H}")
        self.vocab_size = self.out.out_features
        if self.tgt_embedding.weight.shape[0] != self.vocab_size:  # each predicted token is embedded next
            raise ValueError(
                f"{source}: the decoder embeds {self.tgt_embedding.weight.shape[0]} tokens but predicts "
                f"{self.vocab_size} (decoder.embedding.weight vs decoder.out.weight)"
            )
        for name, i in (("sos_id", self.sos_id), ("eos_id", self.eos_id)):
            if not 0 <= i < self.tgt_embedding.weight.shape[0] or i >= self.vocab_size:
                raise ValueError(f"{source}: {name} {i} is outside the target vocabulary")

    # ---- construction --------------------------------------------------------------------------------

    @classmethod
    def from_torch(cls, encoder, decoder, **kw) -> GRUSeq2Seq:
        """From the tutorial's EncoderRNN and AttnDecoderRNN modules (or any with the same parameter names)."""

        def sd(m):
            return {k: v.detach().cpu().numpy() for k, v in m.state_dict().items()}

        for m in (encoder.gru, decoder.gru):
            if not m.batch_first:
                raise ValueError("the GRUs must be batch_first, as in the tutorial")
        return cls(sd(encoder), sd(decoder), **kw)

    def save(self, path) -> None:
        """A folder with model.safetensors (encoder.* / decoder.* tensors) and config.json."""
        from safetensors.numpy import save_file

        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {
            "encoder.embedding.weight": self.src_embedding.weight,
            **{f"encoder.gru.{k}": v for k, v in self.encoder.named_weights()},
            "decoder.embedding.weight": self.tgt_embedding.weight,
            **{f"decoder.attention.{k}": v for k, v in self.attention_weights.items()},
            **{f"decoder.gru.{k}": v for k, v in self.decoder.named_weights()},
            "decoder.out.weight": self.out.weight,
        }
        if self.out.bias is not None:
            tensors["decoder.out.bias"] = self.out.bias
        save_file({k: F._c_aligned(v, np.float32) for k, v in tensors.items()}, str(folder / "model.safetensors"))
        (folder / "config.json").write_text(
            json.dumps(
                {"kind": _KIND, "sos_id": self.sos_id, "eos_id": self.eos_id, "max_length": self.max_length}, indent=1
            )
        )

    @classmethod
    @trims_heap
    def load(cls, path) -> GRUSeq2Seq:
        from ..io.model_folder import errors_name, read_config, read_safetensors

        folder = Path(path)
        cfg = read_config(folder, "a pyattn Seq2Seq folder")
        if cfg.get("kind") != _KIND:
            raise ValueError(f"{folder}: config.json kind is {cfg.get('kind')!r}, expected {_KIND!r}")
        for key in ("sos_id", "eos_id", "max_length"):
            if not isinstance(cfg.get(key), int) or isinstance(cfg.get(key), bool):
                raise ValueError(f"{folder}: config.json '{key}' must be an integer, got {cfg.get(key)!r}")
        t = read_safetensors(folder / "model.safetensors")
        tensors = {k: np.asarray(t[k]) for k in t.keys()}
        with errors_name(str(folder)):
            return cls(
                _sub(tensors, "encoder."),
                _sub(tensors, "decoder."),
                sos_id=cfg["sos_id"],
                eos_id=cfg["eos_id"],
                max_length=cfg["max_length"],
                source=str(folder),
            )

    # ---- the network ---------------------------------------------------------------------------------

    def encode(self, src_ids):
        """Encoder outputs (B, S, H) and final hidden state (layers, B, H) for source ids (B, S)."""
        ids = np.asarray(src_ids)
        if ids.ndim == 1:
            ids = ids[None]
        if ids.ndim != 2 or ids.size == 0:
            raise ValueError(f"expected source ids of shape (batch, seq), got {ids.shape}")
        return self.encoder(self.src_embedding(ids))

    def step(self, tokens, hidden, keys, *, shared_source: bool = False):
        """One decoder step: previous tokens (B,), hidden (1, B, H), `keys` = attention.prepare(encoder outputs).
        With shared_source, `keys` holds one source row and the B rows (beams) all attend to it: they are folded
        into the query length of that row, so the projected keys are never copied per beam.
        Returns (log-probabilities (B, vocab), new hidden, attention weights (B, S))."""
        emb = self.tgt_embedding(np.asarray(tokens)[:, None])  # (B, 1, E)
        q = hidden[0]  # (B, H): the query
        if shared_source:
            context, weights = self.attention(q[None], keys, need_weights=True)
            context, weights = context[0][:, None], weights[0]
        else:
            context, weights = self.attention(q[:, None], keys, need_weights=True)
            weights = weights[:, 0]
        out, hidden = self.decoder(np.concatenate([emb, context], axis=-1), hidden)
        return F.log_softmax(self.out(out[:, 0])), hidden, weights

    def __call__(self, src_ids, tgt_ids):
        """Teacher forcing: log-probabilities (B, T, vocab) of each next token given tgt_ids (B, T) (which start
        with SOS), and the attention weights (B, T, S)."""
        memory, hidden = self.encode(src_ids)
        keys = self.attention.prepare(memory)
        tgt = np.asarray(tgt_ids)
        logps, attns = [], []
        for t in range(tgt.shape[1]):
            lp, hidden, w = self.step(tgt[:, t], hidden, keys)
            logps.append(lp)
            attns.append(w)
        return np.stack(logps, 1), np.stack(attns, 1)

    # ---- decoding ------------------------------------------------------------------------------------

    def greedy(self, src_ids, max_length: Optional[int] = None) -> Translation:
        """Greedy decoding from SOS, one token per step until EOS or max_length (default: the model's), on
        pyattn.generation's greedy search."""
        memory, hidden = self.encode(src_ids)
        B = memory.shape[0]
        n = self.max_length if max_length is None else int(max_length)
        decoder = _GRUDecoder(self)
        sos = np.full((B, 1), self.sos_id, np.int64)
        steps = list(
            search.stream(
                decoder, sos, max_new_tokens=n, memory=(memory, hidden), eos_token_ids=[self.eos_id],
                pad_token_id=self.eos_id,
            )
        )  # fmt: skip
        state = decoder.state
        ids, attns, scores = [], [], []
        for b in range(B):
            row = [int(t[b]) for t in steps]
            t_end = row.index(self.eos_id) + 1 if self.eos_id in row else len(row)  # up to and including EOS
            ids.append(row[:t_end])
            attns.append(np.stack([state.weights[t][b] for t in range(t_end)]))
            score = 0.0
            for t in range(t_end):
                score += float(state.logps[t][b, row[t]])
            scores.append(score)
        return Translation(ids, attns, scores)

    def beam_search(
        self, src_ids, beam_size: int = 4, max_length: Optional[int] = None, length_penalty: float = 1.0
    ) -> Translation:
        """Beam search for each source sentence: the beam keeps the `beam_size` best live hypotheses by summed
        log-probability; a hypothesis ending in EOS is finished; the answer is the finished (or, at max_length,
        live) hypothesis with the best score / length ** length_penalty. beam_size 1 is greedy decoding.

        This search stays the model's own rather than pyattn.generation.beam_search: its finishing rule differs
        from both of the engine's (every EOS candidate ranked above the beam_size-th live one finishes, not only
        those among the best beam_size; scores accumulate in float64; a row stops once beam_size hypotheses
        finished and the best of them beats the best live one at the current length; the EOS counts in the
        length), and it keeps each hypothesis's attention rows, which the engine's rules do not record. Its
        results are what this model's users and tests have; changing them would change translations."""
        if beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {beam_size}")
        ids = np.asarray(src_ids)
        if ids.ndim == 1:
            ids = ids[None]
        results = [self._beam_one(ids[b : b + 1], beam_size, max_length, length_penalty) for b in range(ids.shape[0])]
        return Translation(*(list(x) for x in zip(*results)))

    def _beam_one(self, src, beam, max_length, length_penalty):
        memory, hidden = self.encode(src)
        keys = self.attention.prepare(memory)  # one source row, shared by every beam
        n = self.max_length if max_length is None else int(max_length)
        seqs, attns = [[]], [[]]
        scores = np.zeros(1)
        tokens = np.array([self.sos_id])
        finished = []

        def norm(score, length):
            return score / max(length, 1) ** length_penalty

        for t in range(n):
            lp, hidden, w = self.step(tokens, hidden, keys, shared_source=True)
            total = (scores[:, None] + lp.astype(np.float64)).reshape(-1)
            order = np.argsort(-total, kind="stable")[: 2 * beam]
            nxt_seqs, nxt_attns, nxt_scores, rows, nxt_tokens = [], [], [], [], []
            for c in order:
                r, tok = divmod(int(c), lp.shape[1])
                seq, att = seqs[r] + [tok], attns[r] + [w[r]]
                if tok == self.eos_id:
                    finished.append((norm(total[c], len(seq)), seq, att, float(total[c])))
                else:
                    nxt_seqs.append(seq), nxt_attns.append(att), nxt_scores.append(total[c])
                    rows.append(r), nxt_tokens.append(tok)
                if len(nxt_seqs) == beam:
                    break
            best_live = max((norm(s, t + 1) for s in nxt_scores), default=-np.inf)
            if len(finished) >= beam and max(f[0] for f in finished) >= best_live or not nxt_seqs:
                break
            seqs, attns, scores = nxt_seqs, nxt_attns, np.asarray(nxt_scores)
            hidden = F._c_aligned(hidden[:, rows])
            tokens = np.asarray(nxt_tokens)
        else:
            finished += [(norm(s, len(q)), q, a, float(s)) for s, q, a in zip(scores, seqs, attns)]
        best = max(finished, key=lambda f: f[0])
        return best[1], np.stack(best[2]), best[3]


Seq2Seq = GRUSeq2Seq  # the earlier name, kept

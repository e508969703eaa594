"""The documents' recurrent translator in plain PyTorch -- EncoderRNN, BahdanauAttention, AttnDecoderRNN as the
PyTorch seq2seq tutorial defines them -- the reference pyattn.models.Seq2Seq is tested and benchmarked against."""

import torch
from torch import nn
from torch.nn import functional as F


class EncoderRNN(nn.Module):
    def __init__(self, input_size, hidden_size, dropout_p=0.1):
        super().__init__()
        self.embedding = nn.Embedding(input_size, hidden_size)
        self.gru = nn.GRU(hidden_size, hidden_size, batch_first=True)
        self.dropout = nn.Dropout(dropout_p)

    def forward(self, src):
        return self.gru(self.dropout(self.embedding(src)))


class BahdanauAttention(nn.Module):
    def __init__(self, hidden_size):
        super().__init__()
        self.Wa = nn.Linear(hidden_size, hidden_size)
        self.Ua = nn.Linear(hidden_size, hidden_size)
        self.Va = nn.Linear(hidden_size, 1)

    def forward(self, query, keys):
        scores = self.Va(torch.tanh(self.Wa(query) + self.Ua(keys))).squeeze(2).unsqueeze(1)  # (B, 1, S)
        weights = F.softmax(scores, dim=-1)
        return torch.bmm(weights, keys), weights


class AttnDecoderRNN(nn.Module):
    def __init__(self, hidden_size, output_size, dropout_p=0.1, sos_id=0, max_length=10):
        super().__init__()
        self.embedding = nn.Embedding(output_size, hidden_size)
        self.attention = BahdanauAttention(hidden_size)
        self.gru = nn.GRU(2 * hidden_size, hidden_size, batch_first=True)
        self.out = nn.Linear(hidden_size, output_size)
        self.dropout = nn.Dropout(dropout_p)
        self.sos_id, self.max_length = sos_id, max_length

    def forward(self, encoder_outputs, encoder_hidden, target=None):
        B = encoder_outputs.size(0)
        inp = torch.full((B, 1), self.sos_id, dtype=torch.long)
        hidden, outputs, attentions, hiddens = encoder_hidden, [], [], []
        for i in range(self.max_length if target is None else target.size(1)):
            out, hidden, w = self.forward_step(inp, hidden, encoder_outputs)
            outputs.append(out)
            attentions.append(w)
            hiddens.append(hidden)
            inp = target[:, i].unsqueeze(1) if target is not None else out.topk(1)[1].squeeze(-1).detach()
        return (F.log_softmax(torch.cat(outputs, 1), dim=-1), torch.cat(attentions, 1), torch.cat(hiddens, 0))

    def forward_step(self, inp, hidden, encoder_outputs):
        embedded = self.dropout(self.embedding(inp))
        context, w = self.attention(hidden.permute(1, 0, 2), encoder_outputs)
        output, hidden = self.gru(torch.cat((embedded, context), dim=2), hidden)
        return self.out(output), hidden, w


def build(src_vocab=50, tgt_vocab=60, hidden=32, seed=0, sos_id=0, max_length=10):
    torch.manual_seed(seed)
    enc = EncoderRNN(src_vocab, hidden).eval()
    dec = AttnDecoderRNN(hidden, tgt_vocab, sos_id=sos_id, max_length=max_length).eval()
    return enc, dec


def greedy(enc, dec, src, eos_id):
    """Greedy ids cut after the first EOS (the tutorial's evaluate), their attention rows and log-probs."""
    with torch.inference_mode():
        memory, hidden = enc(src)
        logp, attn, _ = dec(memory, hidden)
    ids = logp.argmax(-1)
    out = []
    for b in range(src.size(0)):
        row = ids[b].tolist()
        n = row.index(eos_id) + 1 if eos_id in row else len(row)
        out.append((row[:n], attn[b, :n].numpy(), logp[b, :n].numpy()))
    return out

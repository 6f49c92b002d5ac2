"""The BERT core: config, embeddings, attention (SDPA + eager reference), blocks, encoder.

The core knows nothing about text or items and has no heads (heads live in `heads.py`, as in
google-research/bert). Shape legend: B batch, L length, H hidden, N heads, D head dim (H / N),
F feed-forward size, V vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from seqbert.model.dropout import Dropout, keep_scale

LAYOUTS = ("bert", "sasrec")


def check_layout(layout: str, pre_ln: bool, owner: str) -> None:
    """The rule for `layout` and `pre_ln` (BertConfig and the jobs' model sections): a ValueError naming
    `owner`'s field and the allowed values."""
    if layout not in LAYOUTS:
        raise ValueError(f"{owner}.layout must be one of {LAYOUTS}, got {layout!r}")
    if layout == "sasrec" and pre_ln:
        raise ValueError(
            f"{owner}.pre_ln applies to layout 'bert' only (layout 'sasrec' places its own norms): "
            "drop pre_ln or use layout 'bert'"
        )


@dataclass(frozen=True)
class BertConfig:
    """Sizes and switches of a BERT encoder; validated on construction.

    `type_vocab_size=0` means no segment embedding (item sequences use none).
    `pre_ln=True` puts LayerNorm before each sub-layer (plus a final LayerNorm) instead of BERT's post-LN.
    `causal=True` makes attention left-to-right (the SASRec baseline from the same core).
    `layout="sasrec"` is Kang & McAuley's SASRec layer as their reference code has it (pmixer/SASRec.pytorch,
    which Klenitskiy & Vasilev's SASRec+ uses): token embeddings scaled by sqrt(H) plus positions with no
    embedding LayerNorm; in each block LayerNorm on the attention query only, the residual taken from that
    normalised query, then LayerNorm before a ReLU feed-forward; a final LayerNorm. "bert" is BERT's.
    `fast_dropout=True` draws CPU dropout masks from 16-bit random integers (`seqbert.model.dropout`),
    ~2.8x cheaper than torch's `bernoulli_`; False uses `F.dropout` everywhere (the reference).
    """

    vocab_size: int
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 1024
    max_len: int = 512
    type_vocab_size: int = 2
    dropout: float = 0.1
    attention_dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    pad_id: int = 0
    pre_ln: bool = False
    layout: str = "bert"  # one of LAYOUTS
    causal: bool = False
    initializer_range: float = 0.02
    fast_dropout: bool = True

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size", "max_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"BertConfig.{name} must be a positive integer, got {value!r}")
        if not isinstance(self.type_vocab_size, int) or self.type_vocab_size < 0:
            raise ValueError(
                f"BertConfig.type_vocab_size must be an integer >= 0, got {self.type_vocab_size!r}"
            )
        if self.hidden_size % self.num_heads != 0:
            raise ValueError(
                f"BertConfig.hidden_size ({self.hidden_size}) must be divisible by "
                f"BertConfig.num_heads ({self.num_heads})"
            )
        if not isinstance(self.fast_dropout, bool):
            raise ValueError(f"BertConfig.fast_dropout must be true or false, got {self.fast_dropout!r}")
        for name in ("dropout", "attention_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"BertConfig.{name} must be in [0, 1), got {value!r}")
        if self.layer_norm_eps <= 0:
            raise ValueError(f"BertConfig.layer_norm_eps must be > 0, got {self.layer_norm_eps!r}")
        if not 0 <= self.pad_id < self.vocab_size:
            raise ValueError(
                f"BertConfig.pad_id must be in [0, vocab_size={self.vocab_size}), got {self.pad_id!r}"
            )
        check_layout(self.layout, self.pre_ln, "BertConfig")
        if self.initializer_range <= 0:
            raise ValueError(f"BertConfig.initializer_range must be > 0, got {self.initializer_range!r}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


class Embeddings(nn.Module):
    """token + (optional) segment + learned position embeddings, then LayerNorm and dropout."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.word = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_id)
        self.position = nn.Embedding(config.max_len, config.hidden_size)
        self.segment = (
            nn.Embedding(config.type_vocab_size, config.hidden_size) if config.type_vocab_size > 0 else None
        )
        # layout "sasrec": word embeddings scaled by sqrt(H), no LayerNorm (Kang & McAuley's input)
        sasrec = config.layout == "sasrec"
        self.norm = None if sasrec else nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.word_scale = math.sqrt(config.hidden_size) if sasrec else 1.0
        self.dropout = Dropout(config.dropout, config.fast_dropout)
        self.max_len = config.max_len

    def forward(
        self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None, position_offset: int = 0
    ) -> torch.Tensor:
        B, L = input_ids.shape
        self.check_length(L, position_offset)
        x = self.words(input_ids) + self.position.weight[position_offset : position_offset + L]  # (B, L, H)
        if self.segment is not None:
            # no token_type_ids means "all segment 0", as in Hugging Face BERT
            x = x + (self.segment.weight[0] if token_type_ids is None else self.segment(token_type_ids))
        return self.finish(x)  # (B, L, H)

    def words(self, ids: torch.Tensor) -> torch.Tensor:
        """The input-side token embeddings (..., H): the table's rows, x sqrt(H) in layout "sasrec"."""
        x = self.word(ids)  # (..., H)
        return x if self.word_scale == 1.0 else x * self.word_scale

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        """LayerNorm (none in layout "sasrec") and dropout of summed embeddings (..., H)."""
        return self.dropout(x if self.norm is None else self.norm(x))

    def check_length(self, L: int, position_offset: int = 0) -> None:
        if position_offset + L > self.max_len:
            raise ValueError(
                f"input length {L} (+ position offset {position_offset}) exceeds BertConfig.max_len="
                f"{self.max_len}; truncate or window it"
            )


def attention_bias(
    attention_mask: torch.Tensor | None, causal: bool, L: int, device: torch.device
) -> torch.Tensor | None:
    """Boolean "may attend" mask broadcastable to (B, N, L, L), or None when every key is visible.

    `attention_mask` is (B, L) with 1 for real tokens and 0 for padding; padded keys are hidden from every
    query. Returning None when nothing is masked lets SDPA take its fastest kernel.
    """
    allowed = None
    if attention_mask is not None and not bool(attention_mask.all()):
        if not bool(attention_mask.any(dim=1).all()):
            empty = (~attention_mask.any(dim=1)).nonzero().flatten().tolist()
            raise ValueError(
                f"attention_mask rows {empty[:10]} are all padding: empty sequences cannot be encoded"
            )
        allowed = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, L)
    if causal:
        tri = torch.ones(L, L, dtype=torch.bool, device=device).tril()  # (L, L)
        # a left-padded query sees only padding under a causal mask; letting every position see itself
        # keeps those rows finite (an all-masked softmax row is NaN, and 0 * NaN poisons real rows)
        allowed = tri if allowed is None else (allowed & tri) | torch.eye(L, dtype=torch.bool, device=device)
    return allowed


# oneDNN's linear with the bias add (and GELU) fused into the matmul, the op torch.compile's CPU backend
# emits; a private op, so it is looked up once and plain `nn.Linear` runs wherever it is missing
_ONEDNN_LINEAR = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def linear(x: torch.Tensor, layer: nn.Linear, gelu: bool = False) -> torch.Tensor:
    """`layer(x)`, then exact (erf) GELU when `gelu`.

    For CPU fp32 inference (no autograd, no autocast, not under torch.compile) this is one oneDNN call: MKL's addmm first copies
    the bias into every output row and GELU makes another pass over (B, L, F), while oneDNN adds both in
    the matmul's epilogue. Measured at 1 thread: the feed-forward block of a hidden-64 model ~35 % faster,
    hidden 256 ~10 %; same results to float rounding (tests compare it with the autograd path, which is
    plain `nn.Linear` + `F.gelu`).
    """
    if (
        _ONEDNN_LINEAR
        and not torch.is_grad_enabled()
        and x.device.type == "cpu"
        and x.dtype == layer.weight.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()  # inductor fuses nn.Linear itself; it cannot lower this call
    ):
        return torch.ops.mkldnn._linear_pointwise(
            x, layer.weight, layer.bias, "gelu" if gelu else "none", [], "none" if gelu else ""
        )
    y = layer(x)
    return F.gelu(y) if gelu else y


def length_groups(attention_mask: torch.Tensor, hidden_size: int) -> list[tuple[torch.Tensor, int, int]]:
    """Split a padded batch into groups of rows of similar length: [(rows, first, last), ...], every row in
    exactly one group, whose columns first .. last - 1 hold every real token of its rows.

    Encoding each group on its own columns only is exact for the real positions: a column that is padding
    in every row of a group is a key no query of the group may see, and its own output is not needed.
    The grouping is chosen by a rough cost model, per group n rows * S columns * (1 + S / 4H) (position-wise
    work, plus attention growing with S) + a fixed 16384 / H tokens for the per-call overhead, among 1, 2,
    4, .. 16 groups of equal row count after sorting by span. Any choice gives the same result.
    """
    B, L = attention_mask.shape
    real = attention_mask.bool()  # (B, L)
    cols = torch.arange(L, device=real.device)
    first = torch.where(real, cols, L).amin(dim=1)  # (B,)
    last = torch.where(real, cols, -1).amax(dim=1) + 1  # (B,)
    order = (last - first).argsort(stable=True)  # (B,)
    firsts, lasts = first[order].tolist(), last[order].tolist()
    overhead = 16384 / hidden_size

    def cost(n: int, span: int) -> float:
        return n * span * (1 + span / (4 * hidden_size)) + overhead

    best, best_cost = [(0, B)], float("inf")
    for k in (1, 2, 4, 8, 16):
        if k > B:
            break
        bounds = [(B * i // k, B * (i + 1) // k) for i in range(k)]
        total = sum(cost(b - a, max(lasts[a:b]) - min(firsts[a:b])) for a, b in bounds)
        if total < best_cost:
            best, best_cost = bounds, total
    return [(order[a:b], min(firsts[a:b]), max(lasts[a:b])) for a, b in best]


def eager_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor | None, dropout_p: float
) -> torch.Tensor:
    """Reference softmax(q k^T / sqrt(D) + mask) v, the formula SDPA must reproduce (tests compare them)."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, N, L, L)
    if allowed is not None:
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    probs = F.dropout(scores.softmax(dim=-1), p=dropout_p)  # (B, N, L, L)
    return probs @ v  # (B, N, L, D)


def dropout_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor | None, dropout_p: float
) -> torch.Tensor:
    """Training-time attention on CPU: `eager_attention` with the fast 16-bit dropout mask
    (`seqbert.model.dropout.keep_scale`, drawn first so a seed reproduces it). SDPA's CPU kernels do not
    fuse dropout; with it they fall back to the same math and draw the mask with the slower
    `bernoulli_`. Masking is an additive 0 / min bias (its backward is free) and dropout one multiply."""
    B, N, L, D = q.shape
    keep = keep_scale((B, N, L, L), dropout_p, q.device)  # (B, N, L, L): 0 or 1 / (1 - p)
    scores = (q / math.sqrt(D)) @ k.transpose(-2, -1)  # (B, N, L, L)
    if allowed is not None:
        bias = torch.zeros(allowed.shape, dtype=scores.dtype, device=scores.device)
        scores = scores + bias.masked_fill_(~allowed, torch.finfo(scores.dtype).min)  # (B, N, L, L)
    return (scores.softmax(dim=-1) * keep) @ v  # (B, N, L, D)


class SelfAttention(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        # one fused (H -> 3H) projection instead of three: one matmul, one read of x
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.out = nn.Linear(config.hidden_size, config.hidden_size)
        self.num_heads = config.num_heads
        self.attention_dropout = config.attention_dropout
        self.fast_dropout = config.fast_dropout
        self.use_sdpa = True  # False selects `eager_attention`, the slow reference

    def forward(
        self, x: torch.Tensor, allowed: torch.Tensor | None, kv: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Self-attention of x (B, L, H); with `kv` (B, L, H), queries from x and keys / values from kv."""
        B, L, H = x.shape
        N, D = self.num_heads, H // self.num_heads
        if kv is None:
            q, k, v = linear(x, self.qkv).view(B, L, 3, N, D).permute(2, 0, 3, 1, 4)
        else:
            q, k, v = self.split_projection(x, kv)
        # q, k, v: (B, N, L, D)
        dropout_p = self.attention_dropout if self.training else 0.0
        if not self.use_sdpa:
            y = eager_attention(q, k, v, allowed, dropout_p)  # (B, N, L, D)
        elif dropout_p > 0 and self.fast_dropout and x.device.type == "cpu":
            y = dropout_attention(q, k, v, allowed, dropout_p)  # (B, N, L, D)
        else:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=allowed, dropout_p=dropout_p
            )  # (B, N, L, D)
        return linear(y.transpose(1, 2).reshape(B, L, H), self.out)  # (B, L, H)

    def forward_last(
        self, x: torch.Tensor, key_allowed: torch.Tensor | None, query: torch.Tensor | None = None
    ) -> torch.Tensor:
        """`forward(x, allowed)[:, -1:]` (B, 1, H) for a last column that may see every allowed key: keys and
        values come from every column, the query and the output projection from the last column only
        (`query` (B, 1, H) when it is not x's last column: `forward(query_states, allowed, kv=x)`)."""
        B, L, H = x.shape
        q, k, v = self.split_projection(x[:, -1:] if query is None else query, x)  # (B, N, 1 | L, D)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=key_allowed)  # (B, N, 1, D)
        return linear(y.transpose(1, 2).reshape(B, 1, H), self.out)  # (B, 1, H)

    def split_projection(
        self, queries: torch.Tensor, keys_values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q from `queries` (B, Lq, H), k and v from `keys_values` (B, L, H), with the rows of the fused qkv
        weight -> q (B, N, Lq, D), k and v (B, N, L, D)."""
        B, Lq, H = queries.shape
        L, N = keys_values.shape[1], self.num_heads
        w, b = self.qkv.weight, self.qkv.bias  # (3H, H), (3H,): rows q | k | v
        q = F.linear(queries, w[:H], b[:H]).view(B, Lq, N, H // N).transpose(1, 2)  # (B, N, Lq, D)
        k, v = F.linear(keys_values, w[H:], b[H:]).view(B, L, 2, N, H // N).permute(2, 0, 3, 1, 4)
        return q, k, v  # k, v: (B, N, L, D) each


class FeedForward(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.up = nn.Linear(config.hidden_size, config.intermediate_size)
        self.down = nn.Linear(config.intermediate_size, config.hidden_size)
        self.relu = config.layout == "sasrec"  # SASRec's ReLU; BERT's exact (erf) GELU otherwise

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.relu:
            return linear(F.relu(linear(x, self.up)), self.down)  # (B, L, H)
        return linear(linear(x, self.up, gelu=True), self.down)  # (B, L, H)


class Block(nn.Module):
    """One Transformer layer: post-LN as in BERT (Devlin et al. 2019), pre-LN (Xiong et al. 2020), or
    SASRec's (Kang & McAuley 2018, reference code): q = LN(x); x = q + attn(q, keys and values from x);
    x = LN(x); x = x + ffn(x)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.attn = SelfAttention(config)
        self.attn_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.ffn = FeedForward(config)
        self.ffn_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.dropout, config.fast_dropout)
        self.pre_ln = config.pre_ln
        self.sasrec = config.layout == "sasrec"

    def forward(self, x: torch.Tensor, allowed: torch.Tensor | None) -> torch.Tensor:
        if self.sasrec:
            q = self.attn_norm(x)  # (B, L, H)
            x = self.ffn_norm(q + self.dropout(self.attn(q, allowed, kv=x)))  # (B, L, H)
            return x + self.dropout(self.ffn(x))  # (B, L, H)
        if self.pre_ln:
            x = x + self.dropout(self.attn(self.attn_norm(x), allowed))  # (B, L, H)
            return x + self.dropout(self.ffn(self.ffn_norm(x)))  # (B, L, H)
        x = self.attn_norm(x + self.dropout(self.attn(x, allowed)))  # (B, L, H)
        return self.ffn_norm(x + self.dropout(self.ffn(x)))  # (B, L, H)

    def forward_last(self, x: torch.Tensor, key_allowed: torch.Tensor | None) -> torch.Tensor:
        """`forward(x, allowed)[:, -1:]` (B, 1, H) in eval mode, where the last column may see every key
        `key_allowed` (B, 1, 1, L) allows (true of the last column under a causal mask too). Everything after
        the key/value projection is position-wise, so it runs on the last column alone: in the last layer
        ~1/6 of the linear work and one attention row instead of L."""
        last = x[:, -1:]  # (B, 1, H)
        if self.sasrec:
            q = self.attn_norm(last)  # (B, 1, H)
            last = self.ffn_norm(
                q + self.dropout(self.attn.forward_last(x, key_allowed, query=q))
            )  # (B, 1, H)
            return last + self.dropout(self.ffn(last))  # (B, 1, H)
        if self.pre_ln:
            last = last + self.dropout(self.attn.forward_last(self.attn_norm(x), key_allowed))  # (B, 1, H)
            return last + self.dropout(self.ffn(self.ffn_norm(last)))  # (B, 1, H)
        last = self.attn_norm(last + self.dropout(self.attn.forward_last(x, key_allowed)))  # (B, 1, H)
        return self.ffn_norm(last + self.dropout(self.ffn(last)))  # (B, 1, H)


class Bert(nn.Module):
    """Embeddings + a stack of bidirectional (or causal) Transformer blocks -> hidden states (B, L, H)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList([Block(config) for _ in range(config.num_layers)])
        self.final_norm = (
            nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
            if config.pre_ln or config.layout == "sasrec"
            else None
        )
        self.apply(lambda m: init_weights(m, config.initializer_range))
        # eval only, off by default: see `forward`
        self.group_by_length = False

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_offset: int = 0,
    ) -> torch.Tensor:
        """Hidden states (B, L, H). `position_offset` shifts the learned positions: columns hold positions
        offset .. offset + L - 1, so a left-padded batch can drop its shared leading padding exactly.

        With `group_by_length = True`, eval mode encodes a padded batch in groups of rows of similar
        length, each on only the columns its rows use (`length_groups`): the real positions get the same
        states as `encode` (states at padding positions mean nothing either way; those no group computes
        are 0). On a random-length BERT4Rec batch it is 1.4x less CPU work, but it multiplies the number of
        ops, and on an oversubscribed CPU each op of a multi-threaded run can cost a scheduler time slice
        (libgomp's threads spin between ops unless OMP_WAIT_POLICY=PASSIVE): there it measured slower, so
        it is off by default (benchmarks/RESULTS.md, core benchmark)."""
        B, L = input_ids.shape
        if self.training or not self.group_by_length or attention_mask is None or bool(attention_mask.all()):
            return self.encode(input_ids, attention_mask, token_type_ids, position_offset)  # (B, L, H)
        # eval: rows of similar length are encoded together on the columns they use (`length_groups`);
        # exact for real positions, and padding positions dropped by every row of a group are left at 0
        self.embeddings.check_length(L, position_offset)
        attention_bias(attention_mask, self.config.causal, L, input_ids.device)  # rejects all-padding rows
        groups = length_groups(attention_mask, self.config.hidden_size)
        if len(groups) == 1 and groups[0][1:] == (0, L):
            return self.encode(input_ids, attention_mask, token_type_ids, position_offset)  # (B, L, H)
        out = None
        for rows, first, last in groups:
            cols = slice(first, last)
            types = token_type_ids[rows, cols] if token_type_ids is not None else None
            h = self.encode(input_ids[rows, cols], attention_mask[rows, cols], types, position_offset + first)
            if out is None:
                out = h.new_zeros(B, L, h.size(-1))  # (B, L, H)
            out[rows, cols] = h  # h: (n, last - first, H)
        return out  # (B, L, H)

    def encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_offset: int = 0,
    ) -> torch.Tensor:
        """Hidden states (B, L, H) of the whole padded batch at once: the reference for the grouped path."""
        B, L = input_ids.shape
        allowed = attention_bias(attention_mask, self.config.causal, L, input_ids.device)
        x = self.embeddings(input_ids, token_type_ids, position_offset)  # (B, L, H)
        for layer in self.layers:
            x = layer(x, allowed)  # (B, L, H)
        return x if self.final_norm is None else self.final_norm(x)  # (B, L, H)

    def encode_last(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, position_offset: int = 0
    ) -> torch.Tensor:
        """`encode(...)[:, -1]` (B, H), the state at the last column of left-padded inputs (a recommender's
        query position), at a fraction of the cost: the last layer computes keys and values for every
        column but everything else for the last column only (`Block.forward_last`). Same result to float
        rounding (tests compare it with `encode`); no segment ids (item sequences have none)."""
        B, L = input_ids.shape
        allowed = attention_bias(attention_mask, self.config.causal, L, input_ids.device)
        # the last column's row of the mask: every real key (a causal mask's last row is all ones)
        full = attention_mask is None or bool(attention_mask.all())
        key_allowed = None if full else attention_mask.bool()[:, None, None, :]  # (B, 1, 1, L)
        x = self.embeddings(input_ids, None, position_offset)  # (B, L, H)
        for layer in self.layers[:-1]:
            x = layer(x, allowed)  # (B, L, H)
        x = self.layers[-1].forward_last(x, key_allowed)[:, 0]  # (B, H)
        return x if self.final_norm is None else self.final_norm(x)  # (B, H)

    def set_attention(self, sdpa: bool) -> None:
        """Switch every layer between SDPA (fast path) and the eager reference."""
        for layer in self.layers:
            layer.attn.use_sdpa = sdpa


def init_weights(module: nn.Module, std: float) -> None:
    """BERT initialisation: N(0, std) weights, zero biases, unit LayerNorm (Devlin et al. 2019)."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=std)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)

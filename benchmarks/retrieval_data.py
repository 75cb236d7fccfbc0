"""Synthetic associative-recall task: multi-query associative recall (MQAR) and its
filler-padded variant.

Each context is ``seq_len`` tokens:

    [BOS filler ... k1 v1 ... filler ... k2 v2 ... filler ...  QUERY k_a  QUERY k_b ...]

``n_facts`` key->value facts (two adjacent tokens each) sit at uniformly random,
non-overlapping depths among filler tokens; the context ends with ``n_queries``
(default 1) pairs of the query marker and one of the context's keys (distinct
facts), and each target is that key's value, predicted at the key's position
(``answer_positions``). The answers never appear in the context after the facts
(a later query sees earlier queries' keys, never their values), so every query is
the same retrieval problem; more than one per context gives more supervised tokens
per unit of compute.

The vocabulary has disjoint ranges, so a context can be parsed back into its
facts without ambiguity (``parse_facts``):

    0            BOS (first token of every context)
    1            QUERY marker
    [2, 2+K)     keys       (K = n_keys)
    [.., +V)     values     (V = n_values)
    [.., +F)     filler     (F = n_filler)

Keys are distinct within a context, and so are values, so a model that only
knows "answer with some value seen in this context" scores 1/n_facts; one that
ignores the context scores 1/n_values.

With ``n_filler=0`` and ``seq_len = 1 + 4 * n_facts`` (``RetrievalTask.mqar``) there is
no filler: the facts are packed back to back and every fact is queried once, which
is multi-query associative recall as in the efficient-attention literature (Zoology,
Arora et al. 2023), with a QUERY marker before each queried key.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

BOS = 0
QUERY = 1
_FIRST_KEY = 2


def answer_positions(seq_len: int, n_queries: int) -> torch.Tensor:
    """(n_queries,) indices whose logits must predict the answers: the queried keys."""
    return seq_len - 2 * n_queries + 1 + 2 * torch.arange(n_queries)


@dataclass(frozen=True)
class RetrievalTask:
    seq_len: int = 256
    n_facts: int = 5
    n_keys: int = 64
    n_values: int = 64
    n_filler: int = 64
    n_queries: int = 1

    def __post_init__(self):
        if self.n_facts > min(self.n_keys, self.n_values):
            raise ValueError("n_facts must not exceed n_keys or n_values (facts are distinct)")
        if not 1 <= self.n_queries <= self.n_facts:
            raise ValueError("n_queries must be in [1, n_facts] (each asks a different fact)")
        if self.body_len < 2 * self.n_facts:
            raise ValueError(f"seq_len {self.seq_len} too short for {self.n_facts} facts")
        if self.n_filler == 0 and self.body_len != 2 * self.n_facts:
            raise ValueError("n_filler=0 needs seq_len = 1 + 2 * (n_facts + n_queries) (no room for filler)")

    @classmethod
    def mqar(cls, n_pairs: int, n_keys: int = 32, n_values: int = 32) -> "RetrievalTask":
        """Multi-query associative recall: n_pairs facts back to back, each queried once."""
        return cls(seq_len=1 + 4 * n_pairs, n_facts=n_pairs, n_keys=n_keys, n_values=n_values,
                   n_filler=0, n_queries=n_pairs)

    # vocabulary layout
    @property
    def key_range(self) -> tuple[int, int]:
        return _FIRST_KEY, _FIRST_KEY + self.n_keys

    @property
    def value_range(self) -> tuple[int, int]:
        lo = self.key_range[1]
        return lo, lo + self.n_values

    @property
    def filler_range(self) -> tuple[int, int]:
        lo = self.value_range[1]
        return lo, lo + self.n_filler

    @property
    def vocab_size(self) -> int:
        return self.filler_range[1]

    @property
    def body_len(self) -> int:
        """Tokens between BOS and the final [QUERY, key] pairs."""
        return self.seq_len - 1 - 2 * self.n_queries

    @property
    def answer_positions(self) -> torch.Tensor:
        return answer_positions(self.seq_len, self.n_queries)

    def to_dict(self) -> dict:
        return asdict(self) | {"vocab_size": self.vocab_size}


@dataclass
class RetrievalBatch:
    """ids (b, seq_len) long; target (b, n_queries) the values to predict at the
    task's ``answer_positions``; keys, values, positions (b, n_facts): the facts each
    context claims, in order of depth, ``positions`` the index of each key token (its
    value follows at +1); query (b, n_queries) indices into the facts of those asked."""
    ids: torch.Tensor
    target: torch.Tensor
    keys: torch.Tensor
    values: torch.Tensor
    positions: torch.Tensor
    query: torch.Tensor

    @property
    def answer_positions(self) -> torch.Tensor:
        return answer_positions(self.ids.shape[1], self.target.shape[1])

    def facts(self) -> list[list[tuple[int, int, int]]]:
        """Per context, the claimed facts as (position, key, value) triples."""
        return [list(zip(p.tolist(), k.tolist(), v.tolist()))
                for p, k, v in zip(self.positions, self.keys, self.values)]


def _distinct(n_rows: int, n_pick: int, n_from: int, gen: torch.Generator) -> torch.Tensor:
    """(n_rows, n_pick) distinct integers in [0, n_from) per row, uniformly at random."""
    return torch.rand(n_rows, n_from, generator=gen).argsort(dim=1)[:, :n_pick]


def make_batch(task: RetrievalTask, batch_size: int, gen: torch.Generator) -> RetrievalBatch:
    """Draw ``batch_size`` contexts from ``gen`` (CPU generator; fully determined by it)."""
    b, n = batch_size, task.n_facts
    k_lo, _ = task.key_range
    v_lo, _ = task.value_range
    f_lo, _ = task.filler_range

    keys = _distinct(b, n, task.n_keys, gen) + k_lo
    values = _distinct(b, n, task.n_values, gen) + v_lo
    # Non-overlapping 2-token slots, uniform over placements: choose n sorted distinct
    # starts among body_len - n "compressed" slots, then spread the k-th by k.
    starts = _distinct(b, n, task.body_len - n, gen).sort(dim=1).values
    positions = 1 + starts + torch.arange(n)            # +1 skips BOS

    if task.n_filler:
        ids = torch.randint(f_lo, f_lo + task.n_filler, (b, task.seq_len), generator=gen)
    else:   # every body slot holds a fact; the rest is overwritten below
        ids = torch.zeros(b, task.seq_len, dtype=torch.long)
    ids[:, 0] = BOS
    ids.scatter_(1, positions, keys)
    ids.scatter_(1, positions + 1, values)
    query = _distinct(b, task.n_queries, n, gen)
    answer = task.answer_positions
    ids[:, answer - 1] = QUERY
    ids[:, answer] = keys.gather(1, query)
    target = values.gather(1, query)
    return RetrievalBatch(ids, target, keys, values, positions, query)


def parse_facts(ids: torch.Tensor, task: RetrievalTask) -> list[tuple[int, int, int]]:
    """Read one context (seq_len,) back into its (position, key, value) facts,
    independently of the generator: every key token in the body and the token after it."""
    k_lo, k_hi = task.key_range
    body = ids[: 1 + task.body_len].tolist()
    return [(i, tok, body[i + 1]) for i, tok in enumerate(body) if k_lo <= tok < k_hi]


def batches(task: RetrievalTask, batch_size: int, seed: int):
    """Endless, reproducible stream of training batches."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        yield make_batch(task, batch_size, gen)


def eval_set(task: RetrievalTask, n: int, seed: int) -> RetrievalBatch:
    """The fixed held-out set (its own seed, disjoint from the training stream's)."""
    return make_batch(task, n, torch.Generator().manual_seed(seed))

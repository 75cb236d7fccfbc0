"""Data for the needle test in miniature: a local byte-level corpus and the
authors' zero-shot needle trials, tokenised as bytes.

Corpus. No network is available, so the pretraining text is the Python Language
Reference as it ships inside CPython: ``pydoc_data.topics.topics`` (the text
``help("assert")`` etc. print; ~466 KB of English prose with grammar rules and
code, the same bytes on every install of a given Python version). The topics are
joined in sorted order, and the SHA-256 of the bytes is recorded with every run, so
a run says exactly what it trained on. It is small (a few passes in the token
budget) and technical, far from SlimPajama; it is what every machine that runs
this package has. The last ``val_fraction`` of the bytes is held out for the loss.

Needle trials (``needle_trials``), after ``build_niah_tests`` in the authors'
``run_bench_original.py`` (tlstngud/sisa-experiment), with bytes for tokens:

    random.seed(42); for each of 200 trials:
        key, value = random.choice(PAIRS)
        needle = f"{key} {value}."     filler = FILLER * 50
        avail = 512 - len(needle) - len(query) - 10
        pos = random.randint(5, avail // 2)          # the needle in the first half
        seq = filler[:pos] + needle + filler[:avail - pos] + query

The five pairs are read from that file: "The secret code is" ALPHA, "The password
is" BRAVO, "The answer is" CHARLIE, "The key number is" DELTA, "The magic word is"
ECHO. Success: the argmax over the whole vocabulary at the last position is the
value's first token. The authors' query is f" {key}" and the value's first token is
that of f" {value}" under the GPT-NeoX BPE, a token that includes the leading space.
With bytes the first byte of " ALPHA" would be the space, the same for all five
values, so here the query ends with the space (f" {key} ") and the target is the
value's first letter (A, B, C, D or E). The five candidates still differ in that
byte, but the argmax is over all 256 bytes, so chance is not 1/5.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

import torch

FILLER = "The quick brown fox jumps over the lazy dog. "
PAIRS = (("The secret code is", "ALPHA"), ("The password is", "BRAVO"), ("The answer is", "CHARLIE"),
         ("The key number is", "DELTA"), ("The magic word is", "ECHO"))
VOCAB = 256


def corpus_bytes() -> bytes:
    """The Python Language Reference topics from ``pydoc_data``, sorted by name."""
    from pydoc_data.topics import topics
    return "\n\n".join(topics[k] for k in sorted(topics)).encode("utf-8")


def corpus_info(data: bytes) -> dict:
    import platform
    return {"source": "pydoc_data.topics (the Python Language Reference shipped with CPython)",
            "python": platform.python_version(), "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest()}


def split(data: bytes, val_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, val) uint8 tensors: the last ``val_fraction`` of the bytes is held out."""
    t = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    cut = int(len(t) * (1 - val_fraction))
    return t[:cut], t[cut:]


def lm_batches(data: torch.Tensor, batch_size: int, seq_len: int, seed: int):
    """Endless stream of (b, seq_len + 1) long windows at random offsets (seeded, so
    every model sees the same order); inputs are [:, :-1], targets [:, 1:]."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        starts = torch.randint(0, len(data) - seq_len - 1, (batch_size,), generator=gen)
        yield torch.stack([data[s:s + seq_len + 1] for s in starts.tolist()]).long()


def val_windows(data: torch.Tensor, seq_len: int, n: int) -> torch.Tensor:
    """n evenly spaced (seq_len + 1)-byte windows of the held-out text."""
    starts = torch.linspace(0, len(data) - seq_len - 1, n).long().tolist()
    return torch.stack([data[s:s + seq_len + 1] for s in starts]).long()


@dataclass
class NeedleTrials:
    """ids (n, L) long, every trial the same length L; target (n,) the value's first
    byte; pair (n,) index into PAIRS; needle_start (n,) where the needle's first byte is."""
    ids: torch.Tensor
    target: torch.Tensor
    pair: torch.Tensor
    needle_start: torch.Tensor


def encode(text: str) -> list[int]:
    return list(text.encode("utf-8"))


def needle_trials(n: int = 200, seed: int = 42, context_len: int = 512) -> NeedleTrials:
    """The authors' trials with byte tokens (see the module docstring)."""
    rng = random.Random(seed)
    filler = encode(FILLER * 50)
    ids, target, pair, start = [], [], [], []
    for _ in range(n):
        key, value = rng.choice(PAIRS)
        i = PAIRS.index((key, value))
        nt, qt = encode(f"{key} {value}."), encode(f" {key} ")
        avail = context_len - len(nt) - len(qt) - 10
        pos = rng.randint(5, avail // 2)
        ids.append((filler[:pos] + nt + filler[:avail - pos] + qt)[:context_len])
        target.append(encode(value)[0])
        pair.append(i)
        start.append(pos)
    if len({len(x) for x in ids}) != 1:
        raise AssertionError("needle trials differ in length")
    return NeedleTrials(torch.tensor(ids), torch.tensor(target), torch.tensor(pair), torch.tensor(start))

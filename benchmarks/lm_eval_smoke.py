"""lm-eval smoke test: ``python -m benchmarks.lm_eval_smoke``.

Saves a tiny random SISA model (``sisa.hf``, with the trust_remote_code files) and a
word-level tokenizer to a directory, runs EleutherAI's lm-evaluation-harness on the
local tasks in ``benchmarks/lm_eval_tasks`` (the needle test as a loglikelihood task,
as a multiple-choice task, and as one-token greedy generation over left-padded
batches) and checks that every score comes back and equals the same quantity
computed directly from the model, one example at a time, without lm-eval.

By default lm-eval runs as its command line,
``lm_eval --model hf --model_args pretrained=DIR,trust_remote_code=True ...``, in a
subprocess that never imports ``sisa.hf`` itself; ``--in-process`` runs the same
HFLM wrapper inside this process instead (what tests/test_hf_lm_eval.py does). No
network: HF_HUB_OFFLINE and HF_DATASETS_OFFLINE are set, the data is the JSONL
shipped beside the task files. ``--write-data`` regenerates that JSONL.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent / "lm_eval_tasks"
DATA = TASKS_DIR / "needle.jsonl"
TASKS = ("sisa_needle", "sisa_needle_choice", "sisa_needle_gen")
CODES = ("ALPHA", "BRAVO", "CHARLIE", "DELTA", "ECHO", "FOXTROT", "GOLF", "HOTEL")
FILLER = ("the grass is green and the sky is blue . the sun is warm and the river runs on . "
          "birds sing in tall trees while clouds drift over quiet hills . a small boat rests by "
          "the old stone bridge near the market .").split()
FACT = "The secret code is {} ."
QUESTION = "What is the secret code ? The secret code is"
SPECIALS = ("[PAD]", "[UNK]", "[EOS]")


def offline_env() -> dict:
    """The environment for lm-eval / transformers: nothing reaches the network."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1", "TOKENIZERS_PARALLELISM": "false"}


def vocabulary() -> list[str]:
    words = set(FILLER) | set(CODES) | set(FACT.format("").split()) | set(QUESTION.split())
    return list(SPECIALS) + sorted(words)


def make_tokenizer():
    """A word-level tokenizer over ``vocabulary()`` (split on whitespace; no special
    tokens added to the text): one token per word, so contexts are ~512 tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {w: i for i, w in enumerate(vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="never")   # words joined by spaces
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", eos_token="[EOS]",
                                   model_max_length=2048)


def needle_examples(n: int = 16, seed: int = 0, length: int = 512) -> list[dict]:
    """n contexts of length - 16 .. length words: filler, the fact at a random word in
    the first half, the question at the end. Fields: context, answer, choices, gold."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        code = CODES[i % len(CODES)]
        total = length - rng.randrange(16)                # different lengths: lm-eval pads the batches
        fact, question = FACT.format(code).split(), QUESTION.split()
        n_fill = total - len(fact) - len(question)
        at = rng.randrange(n_fill // 2)
        start = rng.randrange(len(FILLER))
        filler = [FILLER[(start + j) % len(FILLER)] for j in range(n_fill)]
        words = filler[:at] + fact + filler[at:] + question
        rows.append({"context": " ".join(words), "answer": code, "choices": list(CODES),
                     "gold": CODES.index(code)})
    return rows


def write_data(path: Path = DATA, **kwargs) -> None:
    with open(path, "w") as f:
        for row in needle_examples(**kwargs):
            f.write(json.dumps(row) + "\n")


def read_data(path: Path = DATA) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def tiny_model(vocab_size: int, seed: int = 0):
    """A small random SISAForCausalLM (2 layers, d_model 64, d_state 8)."""
    import torch
    import sisa.hf
    torch.manual_seed(seed)
    cfg = sisa.hf.SISAHFConfig(vocab_size=vocab_size, d_model=64, n_heads=4, n_layers=2, d_state=8, d_ff=128,
                               backend="sdpa", pad_token_id=0, eos_token_id=2)
    model = sisa.hf.SISAForCausalLM(cfg).eval()
    with torch.no_grad():
        # Weights 3x the init's, so that the greedy word depends on the context (a random
        # model at init answers every context alike, and an exact-match check could not fail).
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(3.0)
    return model


def save_tiny(directory: Path, seed: int = 0):
    """Write the tiny model (with its trust_remote_code files) and the tokenizer; returns both."""
    tok = make_tokenizer()
    model = tiny_model(len(tok), seed)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return model, tok


def direct_samples(model, tok, rows) -> list[dict]:
    """Per example, from the model directly (one example at a time, no padding):
    ll = log p(answer | context) at the last position, greedy = the answer is the
    argmax there, choice_lls = log p of each code word, gen = the greedy token's text."""
    import torch
    out = []
    with torch.no_grad():
        for row in rows:
            ids = torch.tensor([tok(row["context"], add_special_tokens=False)["input_ids"]])
            logp = model(ids, use_cache=False).logits[0, -1].float().log_softmax(-1)
            codes = [tok.convert_tokens_to_ids(c) for c in row["choices"]]
            answer = codes[row["gold"]]
            out.append({"ll": logp[answer].item(), "greedy": bool(logp.argmax() == answer),
                        "choice_lls": [logp[c].item() for c in codes],
                        "gen": tok.decode([int(logp.argmax())], skip_special_tokens=True).strip()})
    return out


def direct_scores(samples: list[dict], rows: list[dict]) -> dict:
    """The tasks' metrics from direct_samples: acc = mean greedy; perplexity =
    exp(-mean ll); choice acc = gold has the highest log-likelihood; exact_match =
    the greedy token is the answer."""
    mean = lambda xs: sum(xs) / len(xs)     # noqa: E731
    return {"sisa_needle": {"acc": mean([float(s["greedy"]) for s in samples]),
                            "perplexity": math.exp(-mean([s["ll"] for s in samples]))},
            "sisa_needle_choice": {"acc": mean([float(max(range(len(s["choice_lls"])), key=s["choice_lls"].__getitem__)
                                                      == r["gold"]) for s, r in zip(samples, rows)])},
            "sisa_needle_gen": {"exact_match": mean([float(s["gen"] == r["answer"]) for s, r in zip(samples, rows)])}}


def compare_samples(logged: dict, samples: list[dict], tol: float = 1e-4) -> list[str]:
    """lm-eval's logged per-example responses (task -> list of {doc_id, filtered_resps})
    against direct_samples: the same log-likelihoods, greedy flags and generated words."""
    problems = []
    for task in TASKS:
        entries = logged.get(task) or []
        if len(entries) != len(samples):
            problems.append(f"{task}: lm-eval logged {len(entries)} examples, expected {len(samples)}")
            continue
        for e in entries:
            want, resp = samples[e["doc_id"]], e["filtered_resps"]
            if task == "sisa_needle":
                ll, greedy = resp[0] if isinstance(resp[0], (list, tuple)) else resp
                # (the CLI's sample log holds these as strings: 'False', '-3.5')
                ok = math.isclose(float(ll), want["ll"], abs_tol=tol) and str(greedy) == str(want["greedy"])
                got = (ll, greedy)
            elif task == "sisa_needle_choice":
                got = [float(r[0] if isinstance(r, (list, tuple)) else r) for r in resp]
                ok = all(math.isclose(a, b, abs_tol=tol) for a, b in zip(got, want["choice_lls"]))
            else:
                got = resp[0] if isinstance(resp, list) else resp
                ok = str(got).strip() == want["gen"]
            if not ok:
                problems.append(f"{task} doc {e['doc_id']}: lm-eval {got!r}, direct {want}")
    return problems


def _metric(results: dict, task: str, name: str) -> float:
    """lm-eval's results[task] keys metrics as 'name,filter' ('acc,none', 'exact_match,strip')."""
    for key, value in results[task].items():
        if key.split(",")[0] == name:
            return float(value)
    raise KeyError(f"lm-eval returned no {name!r} for {task}: {sorted(results[task])}")


def compare(results: dict, expected: dict, rel: float = 1e-4) -> list[str]:
    """Mismatches between lm-eval's aggregate results and direct_scores (empty: all agree)."""
    problems = []
    for task, metrics in expected.items():
        if task not in results:
            problems.append(f"{task}: missing from lm-eval's results ({sorted(results)})")
            continue
        for name, want in metrics.items():
            try:
                got = _metric(results, task, name)
            except KeyError as e:
                problems.append(str(e))
                continue
            if not (math.isfinite(got) and math.isclose(got, want, rel_tol=rel, abs_tol=1e-9)):
                problems.append(f"{task} {name}: lm-eval {got!r}, direct {want!r}")
    return problems


def run_in_process(model, tok, tasks=TASKS, batch_size: int = 4, limit: int | None = None) -> tuple[dict, dict]:
    """lm_eval.simple_evaluate with the HFLM wrapper around ``model`` -> (results[task], samples[task])."""
    os.environ.update({k: v for k, v in offline_env().items() if k.startswith(("HF_", "TRANSFORMERS_", "TOKENIZERS_"))})
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=batch_size, device="cpu", backend="causal")
    out = simple_evaluate(model=lm, tasks=list(tasks), task_manager=TaskManager(include_path=str(TASKS_DIR)),
                          limit=limit, bootstrap_iters=0, log_samples=True)
    return out["results"], out["samples"]


def run_cli(model_dir: Path, out_dir: Path, tasks=TASKS, batch_size: int = 4, limit: int | None = None) -> tuple[dict, dict]:
    """``lm_eval --model hf --model_args pretrained=DIR,trust_remote_code=True ...`` -> (results[task],
    samples[task] as logged by --log_samples)."""
    cmd = [sys.executable, "-m", "lm_eval", "--model", "hf",
           "--model_args", f"pretrained={model_dir},trust_remote_code=True,dtype=float32",
           "--tasks", ",".join(tasks), "--include_path", str(TASKS_DIR), "--batch_size", str(batch_size),
           "--device", "cpu", "--output_path", str(out_dir), "--log_samples"]
    if limit is not None:
        cmd += ["--limit", str(limit)]
    print("$", " ".join(cmd), flush=True)
    res = subprocess.run(cmd, env=offline_env(), capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"lm_eval exited {res.returncode}:\n{res.stderr[-4000:]}")
    files = sorted(out_dir.rglob("results*.json"), key=os.path.getmtime)
    if not files:
        raise RuntimeError(f"lm_eval wrote no results*.json under {out_dir}:\n{res.stdout[-2000:]}")
    samples = {}
    for task in tasks:
        logs = sorted((f for f in out_dir.rglob(f"samples_{task}_*.jsonl")         # not sisa_needle_choice's
                       if f.name[len(f"samples_{task}_"):][:1].isdigit()), key=os.path.getmtime)
        if logs:
            samples[task] = [json.loads(line) for line in logs[-1].read_text().splitlines() if line.strip()]
    return json.loads(files[-1].read_text())["results"], samples


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--in-process", action="store_true", help="run HFLM in this process, not the lm_eval CLI")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--limit", type=int, default=None, help="examples per task (default: all 16)")
    parser.add_argument("--keep", type=Path, default=None, help="save the model directory here (default: a temp dir)")
    parser.add_argument("--write-data", action="store_true", help=f"regenerate {DATA.name} and exit")
    args = parser.parse_args(argv)
    if args.write_data:
        write_data()
        print(f"wrote {DATA}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.keep or Path(tmp) / "model"
        model, tok = save_tiny(model_dir)
        rows = read_data()[: args.limit]
        t0 = time.perf_counter()
        if args.in_process:
            results, logged = run_in_process(model, tok, batch_size=args.batch_size, limit=args.limit)
        else:
            results, logged = run_cli(model_dir, Path(tmp) / "out", batch_size=args.batch_size, limit=args.limit)
        took = time.perf_counter() - t0
        samples = direct_samples(model, tok, rows)
        expected = direct_scores(samples, rows)
    for task in TASKS:
        shown = {k: v for k, v in results.get(task, {}).items() if "stderr" not in k and k != "alias"}
        print(f"{task}: lm-eval {shown}  direct {expected[task]}")
    problems = compare(results, expected) + compare_samples(logged, samples)
    print(f"lm-eval took {took:.1f} s ({'in process' if args.in_process else 'CLI'}, {len(rows)} examples per task)")
    if problems:
        print("MISMATCH:\n  " + "\n  ".join(problems))
        return 1
    print("OK: every score came back and equals the direct computation, example by example")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Loader for the local lm-eval tasks in this folder (``custom_dataset: !function
sisa_tasks.load``): reads a JSONL file shipped beside this module; no network."""
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def load(file: str, **_metadata):
    """{"test": datasets.Dataset} from ``HERE / file`` (one JSON object per line)."""
    import datasets
    path = HERE / file
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    if not rows:
        raise ValueError(f"{path} holds no examples")
    return {"test": datasets.Dataset.from_list(rows)}

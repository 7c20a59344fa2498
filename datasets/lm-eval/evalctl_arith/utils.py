"""Loads the task's questions from the JSON Lines file beside this one, wherever the
directory is: a path in the task YAML would be relative to lm-eval's working directory."""

import json
from pathlib import Path

import datasets

DATA = Path(__file__).with_name("evalctl_arith.jsonl")


def load(**_kwargs):
    with DATA.open(encoding="utf-8") as lines:
        rows = [json.loads(line) for line in lines if line.strip()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})

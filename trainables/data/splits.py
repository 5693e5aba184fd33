"""Train / validation / test splits that never mix the slices of one case or patient.

Modes:

- ``by_case`` (the default): the validation split is carved from the training
  cases by *group* (patient or volume; never by slice) with a fixed seed; the
  test split is the set's own test split (``imagesTs``, ACDC's ``testing``,
  ...) or comes from a split file, a JSON object ``{"train": [case ids],
  "val": [...], "test": [...]}`` (``val`` optional: then carved from train).
  The test split is touched only by the evaluation step.
- ``slice_blocks``: for sets that hold a single case (such as the offline
  demo's one MRI volume): each case's non-blank samples are cut into three
  contiguous blocks, train, validation and test, in slice order. Neighbouring
  blocks share anatomy, so results are optimistic and every output marks them
  with the split mode. Allowed only when asked for explicitly.

Refused with the offending case named: an empty split, a case in two splits,
an unknown case id in a split file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainables.data.cases import Case, CaseArrays
from trainables.errors import DataError

SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True)
class Part:
    """A case and the share of its samples that belongs to one split."""

    case: Case
    block: tuple[float, float] = (0.0, 1.0)  # fractions of its non-blank samples (slice_blocks)

    def select(self, arrays: CaseArrays) -> CaseArrays:
        """The samples of ``arrays`` in this part."""
        if self.block == (0.0, 1.0):
            return arrays
        usable = arrays.nonblank()
        low, high = (round(f * len(usable)) for f in self.block)
        chosen = usable[low:high]
        masks = arrays.masks[chosen] if arrays.masks is not None else None
        return CaseArrays(arrays.images[chosen], masks, arrays.spacing)


@dataclass(frozen=True)
class Splits:
    train: tuple[Part, ...]
    val: tuple[Part, ...]
    test: tuple[Part, ...]
    mode: str

    def __getitem__(self, name: str) -> tuple[Part, ...]:
        return {"train": self.train, "val": self.val, "test": self.test}[name]


def _carve_validation(cases: list[Case], fraction: float, seed: int) -> tuple[list[Case], list[Case]]:
    groups = sorted({case.group for case in cases})
    if len(groups) < 2:
        raise DataError(
            f"a by-case split needs at least 2 training cases or patients, found {len(groups)}: "
            "add cases, or use data.split.mode: slice_blocks for a single-case set"
        )
    count = min(len(groups) - 1, max(1, round(fraction * len(groups))))
    validation = set(np.random.default_rng(seed).permutation(groups)[:count].tolist())
    return [c for c in cases if c.group not in validation], [c for c in cases if c.group in validation]


def _from_file(path: Path, cases: list[Case]) -> dict[str, list[Case]]:
    try:
        listing = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"split file {path} cannot be read as JSON ({exc})") from None
    by_id = {case.case_id: case for case in cases}
    unknown_keys = sorted(set(listing) - set(SPLIT_NAMES))
    if unknown_keys:
        raise DataError(f"split file {path} has keys {unknown_keys}; valid: {', '.join(SPLIT_NAMES)}")
    splits: dict[str, list[Case]] = {}
    for name, ids in listing.items():
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise DataError(f"split file {path}: case ids {missing[:5]} of {name!r} are not in the set")
        splits[name] = [by_id[i] for i in ids]
    return splits


def _check(splits: dict[str, list[Case]], source: str) -> None:
    seen: dict[tuple[str, str], str] = {}
    for name in SPLIT_NAMES:
        if not splits.get(name):
            raise DataError(f"the {name} split of {source} is empty: every split needs at least one case")
        for case in splits[name]:
            keys = [("case", case.case_id)] + (
                [("patient", case.group)] if case.group != case.case_id else []
            )
            for key in keys:
                if key in seen and seen[key] != name:
                    raise DataError(
                        f"{key[0]} {key[1]!r} of {source} is in both the {seen[key]} and the {name} split"
                    )
                seen[key] = name


def make_splits(
    train_cases: list[Case],
    test_cases: list[Case],
    *,
    mode: str = "by_case",
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    seed: int = 0,
    split_file: str | None = None,
    source: str = "the set",
) -> Splits:
    """Split the cases; see the module docstring for the modes and what is refused."""
    if mode == "slice_blocks":
        train_end = 1.0 - val_fraction - test_fraction
        blocks = {
            "train": (0.0, train_end),
            "val": (train_end, 1.0 - test_fraction),
            "test": (1.0 - test_fraction, 1.0),
        }
        cases = train_cases + test_cases
        if not cases:
            raise DataError(f"the train split of {source} is empty: every split needs at least one case")
        parts = {name: tuple(Part(case, block) for case in cases) for name, block in blocks.items()}
        return Splits(parts["train"], parts["val"], parts["test"], mode)
    if mode != "by_case":
        raise KeyError(f"unknown split mode {mode!r}; valid: by_case, slice_blocks")
    if split_file:
        chosen = _from_file(Path(split_file), train_cases + test_cases)
        if "val" not in chosen:
            chosen["train"], chosen["val"] = _carve_validation(chosen.get("train", []), val_fraction, seed)
    else:
        kept, carved = _carve_validation(train_cases, val_fraction, seed)
        chosen = {"train": kept, "val": carved, "test": test_cases}
    _check(chosen, source)
    train, val, test = (tuple(Part(case) for case in chosen[name]) for name in SPLIT_NAMES)
    return Splits(train, val, test, mode)

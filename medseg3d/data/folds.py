"""Deterministic, stratified cross-validation folds."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence


def assign_folds(
    case_ids: Sequence[str], folds: int, seed: int = 0, groups: Mapping[str, str | None] | None = None
) -> dict[str, int]:
    """Assign each case to one of ``folds`` folds, balanced within every group (e.g. HGG/LGG grade).

    The result depends only on the set of case IDs, their groups, ``folds`` and ``seed``, never on the
    order the cases were found in, so re-running a conversion gives the same split.

    Args:
        case_ids: the cases to split.
        folds: number of folds (>= 1).
        seed: seed of the shuffle.
        groups: case ID -> stratum; cases missing from it (or mapped to None) form one stratum.

    Returns:
        case ID -> fold index in ``range(folds)``.

    Example:
        >>> split = assign_folds(["a", "b", "c", "d"], folds=2, seed=0)
        >>> sorted(split.values())
        [0, 0, 1, 1]
    """
    if folds < 1:
        raise ValueError(f"folds must be >= 1, got {folds}")
    groups = groups or {}
    strata: dict[str, list[str]] = {}
    for case_id in sorted(set(case_ids)):
        strata.setdefault(str(groups.get(case_id)), []).append(case_id)
    rng = random.Random(seed)
    assignment: dict[str, int] = {}
    offset = 0
    for stratum in sorted(strata):
        members = strata[stratum]
        rng.shuffle(members)
        for i, case_id in enumerate(members):
            assignment[case_id] = (offset + i) % folds
        # Continue the round-robin where this stratum stopped so small strata do not all start at fold 0.
        offset = (offset + len(members)) % folds
    return assignment

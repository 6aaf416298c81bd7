"""How good each person is, measured on the round's tasks (pure functions).

- **Accuracy** on gold tasks: the share of true boxes that the person's answer matches
  (IoU >= 0.5 and the same class, one to one: :func:`hitl_plugin.boxes.same_object_pairs`),
  pooled over the person's gold tasks, with a 95 % Wilson interval. A planted error the
  person left in place is a true box their answer does not match.
- **Precision** on gold tasks: the share of the person's boxes that match a true box.
- **Agreement** on overlapped non-gold tasks: box F1 of the person's answer with the task's
  consensus, pooled over those tasks.
- **Seconds per task**: the median of Label Studio's ``lead_time`` of their answers.

A person is **flagged** when their measured accuracy is below ``labeling.min_accuracy``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from hitl_plugin.boxes import same_object_pairs
from hitl_plugin.schemas import AnnotatorScore

__all__ = ["Tally", "table", "wilson"]


def wilson(successes: int, n: int, z: float = 1.96) -> list[float] | None:
    """The Wilson score interval of a binomial share (95 % by default); None for n = 0."""
    if n <= 0:
        return None
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4)]


@dataclass
class Tally:
    """What one person did in a round, counted as the tasks are read."""

    tasks: int = 0
    gold_tasks: int = 0
    gold_boxes: int = 0
    gold_matched: int = 0
    answer_boxes_on_gold: int = 0
    agreement_tasks: int = 0
    agreement_pairs: int = 0  # 2 x matched boxes with the consensus
    agreement_boxes: int = 0  # their boxes + the consensus's boxes
    lead_times: list[float] = field(default_factory=list)
    held: int = 0

    def answered(self, lead_time: float | None) -> None:
        self.tasks += 1
        if lead_time is not None and math.isfinite(lead_time) and lead_time >= 0:
            self.lead_times.append(float(lead_time))

    def gold(self, boxes: Sequence[dict], truth: Sequence[dict]) -> None:
        """Score one answer to a gold task against the true boxes."""
        self.gold_tasks += 1
        self.gold_boxes += len(truth)
        self.answer_boxes_on_gold += len(boxes)
        self.gold_matched += len(same_object_pairs(truth, boxes))

    def agree(self, boxes: Sequence[dict], consensus: Sequence[dict]) -> None:
        """Compare one answer to an overlapped task with the task's consensus."""
        self.agreement_tasks += 1
        self.agreement_pairs += 2 * len(same_object_pairs(consensus, boxes))
        self.agreement_boxes += len(boxes) + len(consensus)

    @property
    def accuracy(self) -> float | None:
        return self.gold_matched / self.gold_boxes if self.gold_boxes else None


def table(tallies: dict[str, Tally], *, min_accuracy: float | None) -> list[AnnotatorScore]:
    """The per-person table of a round, one row per person, sorted by name."""
    rows = []
    for name in sorted(tallies):
        t = tallies[name]
        accuracy = t.accuracy
        rows.append(AnnotatorScore(
            annotator=name, tasks=t.tasks, gold_tasks=t.gold_tasks, gold_boxes=t.gold_boxes,
            gold_matched=t.gold_matched,
            accuracy=None if accuracy is None else round(accuracy, 4),
            accuracy_ci95=wilson(t.gold_matched, t.gold_boxes),
            precision=(round(t.gold_matched / t.answer_boxes_on_gold, 4)
                       if t.answer_boxes_on_gold else None),
            agreement=(round(t.agreement_pairs / t.agreement_boxes, 4)
                       if t.agreement_boxes else (1.0 if t.agreement_tasks else None)),
            agreement_tasks=t.agreement_tasks,
            median_seconds=(round(statistics.median(t.lead_times), 3)
                            if t.lead_times else None),
            flagged=bool(min_accuracy is not None and accuracy is not None
                         and accuracy < min_accuracy),
            held_answers=t.held))
    return rows

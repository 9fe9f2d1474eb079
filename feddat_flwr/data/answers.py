"""A client's answer vocabulary, its training targets and VQA scoring.

The vocabulary is the `max_answers` most frequent training answers (every annotator's answer
counts; ties go to the alphabetically first), kept in alphabetical order: the private head's
output order. With several annotators per question (an `answers` list), an answer's target is
its VQA score min(#annotators who gave it / 3, 1) and a prediction scores the same; with one
answer per question, the target is its index and a prediction scores 1 if it is that answer.
An example none of whose answers is in the vocabulary has no target: it is left out of training
and scores 0 in evaluation.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property

VQA_ANNOTATORS_FOR_FULL_SCORE = 3


def vqa_score(answer: str, answers: Sequence[str]) -> float:
    """The VQA accuracy of giving `answer` when the annotators gave `answers`."""
    return min(sum(a == answer for a in answers) / VQA_ANNOTATORS_FOR_FULL_SCORE, 1.0)


def answer_counts(answer_lists: Iterable[Sequence[str]]) -> Counter:
    return Counter(a for answers in answer_lists for a in answers)


@dataclass(frozen=True)
class Vocabulary:
    labels: tuple[str, ...]
    multi_answer: bool  # soft VQA targets (several annotators) rather than one label per question

    @classmethod
    def build(cls, answer_lists: Sequence[Sequence[str]], max_answers: int, multi_answer: bool) -> Vocabulary:
        counts = answer_counts(answer_lists)
        top = sorted(counts, key=lambda a: (-counts[a], a))[:max_answers]
        return cls(tuple(sorted(top)), multi_answer)

    def __len__(self) -> int:
        return len(self.labels)

    @cached_property
    def _index(self) -> dict[str, int]:
        return {a: i for i, a in enumerate(self.labels)}

    def target(self, answers: Sequence[str]) -> int | dict[int, float] | None:
        """The training target of one example: a label index, {index: VQA score}, or None."""
        index = self._index
        if not self.multi_answer:
            return index.get(answers[0])
        scores = {index[a]: vqa_score(a, answers) for a in set(answers) if a in index}
        return scores or None

    def majority_score(self, train_answers: Sequence[Sequence[str]], test_answers: Sequence[Sequence[str]]) -> float:
        """Mean score on the test examples of always giving the most frequent training answer
        (ties: the alphabetically first)."""
        if not train_answers or not test_answers:
            return 0.0
        counts = answer_counts(train_answers)
        top = max(sorted(counts), key=counts.__getitem__)
        return sum(self.score(top, answers) for answers in test_answers) / len(test_answers)

    def score(self, answer: str, answers: Sequence[str]) -> float:
        """The score of predicting `answer` for an example whose annotators gave `answers`."""
        return vqa_score(answer, answers) if self.multi_answer else float(answer == answers[0])

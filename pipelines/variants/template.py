"""The LLM stage's rung without an LLM: answers and captions from the upstream labels by string rules.

With a question (``payload.question``) it answers two shapes of question, by
matching words against the detector's labels, nothing else:

- "How many <noun> ...?": the number of detections whose label, or the
  label's English plural (``varipipe.text.plural``), is the noun; 0 if none.
- "Is there a/an/any <noun> ...?" / "Are there <noun> ...?": "yes" when the
  noun is a label (or its plural) of a detection or of the classifier's
  crops, else "no".

It has no knowledge of what things are (no category map, no synonyms): it
answers "Is there an animal?" with yes only when something was labelled
"animal". Any other question gets "unknown". Without a question it writes a
template sentence from the counted labels ("The photo shows two people and a
cup."). Measured with the same metric as the LLM rungs (profiler/qa.py).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from varipipe.pipelines.variant import NoModelVariant, Payload, StageOutput
from varipipe.pipelines.variants.outputs import Caption, collect_labels, counted_labels
from varipipe.records import VariantSpec
from varipipe.text import article, plural

__all__ = ["TemplateAnswerer", "make", "answer", "caption", "UNKNOWN"]

UNKNOWN = "unknown"  # the answer to a question of a shape it cannot parse
_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
_HOW_MANY = re.compile(r"\bhow many (?P<noun>[a-z][a-z ]*?)(?: (?:are|is|do|can|were|there)\b.*)?$")
_IS_THERE = re.compile(r"^(?:is|are) there (?:(?:a|an|any|some) )?(?P<noun>[a-z][a-z ]*?)(?: (?:in|on|at)\b.*)?$")


def _noun_matches(noun: str, label: str) -> bool:
    label = label.lower()
    return noun in (label, plural(label))


def answer(question: str, payload: Payload) -> str:
    """The rule-based answer to ``question`` from the payload's upstream outputs."""
    text = " ".join(re.sub(r"[^a-z ]", " ", question.lower()).split())
    counts = counted_labels(payload.outputs)
    if m := _HOW_MANY.search(text):
        noun = m.group("noun")
        return str(sum(n for label, n in counts if _noun_matches(noun, label)))
    if m := _IS_THERE.search(text):
        noun = m.group("noun")
        labels = [label for label, _ in counts] + collect_labels(payload.outputs)
        return "yes" if any(_noun_matches(noun, label) for label in labels) else "no"
    return UNKNOWN


def _amount(label: str, n: int) -> str:
    if n == 1:
        return f"{article(label)} {label}"
    return f"{_NUMBER_WORDS[n] if n < len(_NUMBER_WORDS) else n} {plural(label)}"


def caption(payload: Payload) -> str:
    """"The photo shows two people and a cup." from the detections ("nothing recognisable" without)."""
    parts = [_amount(label, n) for label, n in counted_labels(payload.outputs)]
    if not parts:
        parts = collect_labels(payload.outputs)[:1] or ["nothing recognisable"]
    things = parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} and {parts[-1]}"
    return f"The photo shows {things}."


class TemplateAnswerer(NoModelVariant):
    """A variant with no model: ``infer`` answers (or captions) each request by the rules above."""

    def __init__(self, spec: VariantSpec, threads: int = 1, device: str = "cpu") -> None:
        if device != "cpu":
            raise spec.spec_error("", f"device {device!r}: the template rung runs on the CPU only")
        super().__init__(spec, threads)

    def infer(self, batch: Sequence[Payload]) -> list[StageOutput]:
        out: list[StageOutput] = []
        for p in batch:
            labels = tuple(label for label, _ in counted_labels(p.outputs))
            if p.question is not None:
                out.append(Caption(answer(p.question, p), 0, labels, p.question))
            else:
                out.append(Caption(caption(p), 0, labels))
        return out


def make(spec: VariantSpec, threads: int = 1, device: str = "cpu") -> TemplateAnswerer:
    return TemplateAnswerer(spec, threads=threads, device=device)

"""The LLM stage's prompt for a question about the image (``payload.question``), and its answer's clean-up.

The labels are given as a counted list from the detector's output ("person: 2,
cup: 1"): stage pre-processing, so the model reads counts instead of
counting repeated words. Classifier labels that are not already detector
labels follow on a line of their own ("closer look: tabby, coffee mug").

Few-shot examples (``SHOTS``) show the answer format: a number, or yes / no.
They are made up, not taken from the labelled set, and their category
questions use words that are no COCO supercategory ("fruit", "drink", "tool"),
so they teach the format, not the answers the QA set asks for.
Chosen on the dev split (benchmarks/llm_qa.py; benchmarks/README.md).
"""

from __future__ import annotations

from collections.abc import Sequence

from varipipe.pipelines.variant import Payload
from varipipe.pipelines.variants.outputs import collect_labels, counted_labels

__all__ = ["QA_SYSTEM", "SHOTS", "QA_MAX_TOKENS", "QA_STOP", "objects_line", "build_qa_prompt", "qa_prefix",
           "clean_answer"]

QA_SYSTEM = ("You answer questions about a photo. You are told the objects detected in it and how many of each. "
             "Answer with one number, or with yes or no.")
# An answer is a number or yes/no: 4 tokens leave room for "yes" / "12" and an end token.
QA_MAX_TOKENS = 4
QA_STOP = ["\n", ".", ",", "<|im_end|>", "<end_of_turn>"]
NO_OBJECTS = "none"
_HOLE = "\x00"  # stands for the request's part of a prompt when finding the shared prefix
MAX_EXTRA_LABELS = 3  # classifier labels beyond the detector's: the crops' top-1 names (max_crops = 3)

# (objects, closer look, question, answer): made up, see the module doc.
SHOTS: tuple[tuple[str, str, str, str], ...] = (
    ("banana: 3, bowl: 1", "", "How many bananas are in the picture?", "3"),
    ("cup: 2", "", "Is there a fruit in the picture?", "no"),
    ("person: 1, bottle: 1", "", "How many dogs are in the picture?", "0"),
    ("orange: 2, knife: 1", "", "Is there a fruit in the picture?", "yes"),
)


def objects_line(payload: Payload) -> tuple[str, str]:
    """("person: 2, cup: 1", "tabby, coffee mug"): the detector's counted labels, and the classifier's labels
    that are not detector labels."""
    counts = counted_labels(payload.outputs)
    names = {label for label, _ in counts}
    extra = [label for label in collect_labels(payload.outputs) if label not in names][:MAX_EXTRA_LABELS]
    objects = ", ".join(f"{label}: {n}" for label, n in counts) or NO_OBJECTS
    return objects, ", ".join(extra)


def _user(objects: str, extra: str, question: str) -> str:
    more = f"\nCloser look: {extra}" if extra else ""
    return f"Objects: {objects}{more}\nQuestion: {question}"


def build_qa_prompt(payload: Payload, style: str, shots: int = len(SHOTS), system: str = QA_SYSTEM) -> str:
    """The prompt for ``payload.question`` in the model's style ("chatml" or "completion"), with ``shots``
    examples first; the model's continuation is the answer."""
    assert payload.question is not None
    objects, extra = objects_line(payload)
    return _qa_text(objects, extra, payload.question, style, shots, system)


def qa_prefix(style: str, shots: int = len(SHOTS), system: str = QA_SYSTEM) -> str:
    """The text every question's prompt starts with (system message and examples), up to the request's part:
    batched decoding evaluates it once (``_llama_batch``)."""
    return _qa_text(_HOLE, _HOLE, _HOLE, style, shots, system).split(_HOLE, 1)[0]


def _qa_text(objects: str, extra: str, question: str, style: str, shots: int, system: str) -> str:
    examples: Sequence[tuple[str, str, str, str]] = SHOTS[:shots]
    if style == "chatml":
        turns = "".join(f"<|im_start|>user\n{_user(o, e, q)}<|im_end|>\n<|im_start|>assistant\n{a}<|im_end|>\n"
                        for o, e, q, a in examples)
        return (f"<|im_start|>system\n{system}<|im_end|>\n{turns}"
                f"<|im_start|>user\n{_user(objects, extra, question)}<|im_end|>\n<|im_start|>assistant\n")
    if style == "completion":
        head = f"{system}\n\n"
        turns = "".join(f"{_user(o, e, q)}\nAnswer: {a}\n\n" for o, e, q, a in examples)
        return f"{head}{turns}{_user(objects, extra, question)}\nAnswer:"
    raise ValueError(f"prompt_style must be 'chatml' or 'completion', got {style!r}")


def clean_answer(generated: str) -> str:
    """The generated answer on one line, whitespace collapsed."""
    return " ".join(generated.split())

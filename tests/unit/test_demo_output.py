"""What `varipipe demo` prints about the adapter's decisions: each configuration and why."""

from __future__ import annotations

from varipipe.commands.demo import decision_lines

QWEN = "detector=yolov10n-416 b2 x1, llm=qwen2.5-coder-0.5b b2 x1"
TEMPLATE = "detector=yolov10n-416 b2 x1, llm=template b4 x1"
EXPLANATION = ("detector: yolov10n-416 b=2 x1 cpu:1 (accuracy 0.532)\n"
               "llm: template b=4 x1 cpu:1 (accuracy 0.776); runner-up qwen2.5-coder-0.5b b=4 x2 cpu:1 lost: "
               "e2e latency would be 6.788s > SLA 4.000s")


def _entry(t, frm, to, **kw):
    return {"time": t, "from": frm, "to": to, "policy": "ipa", "status": "optimal", "reason": "",
            "explanation": "", "binding_constraints": [], **kw}


def test_decision_lines_say_when_what_and_why():
    log = [_entry(100.0, "(none)", QWEN, policy="", status="fixed"),
           _entry(112.0, QWEN, TEMPLATE, load_rps=1.0, predicted_accuracy=0.1819, explanation=EXPLANATION,
                  binding_constraints=["sla_end_to_end", "cluster_capacity"]),
           _entry(170.0, TEMPLATE, QWEN, load_rps=0.333, predicted_accuracy=0.1871,
                  explanation="detector: yolov10n-416 b=2\nllm: qwen2.5-coder-0.5b b=2 x1 cpu:1")]
    lines = decision_lines(log, load_started=100.0)
    text = "\n".join(lines)
    assert lines[0] == f"  t=   +0s  {QWEN}" and "fixed fixed" in lines[1]
    assert f"t=  +12s  {TEMPLATE}" in text
    assert ("why: ipa optimal; decided for 1.00 req/s; end-to-end accuracy 0.1819; "
            "binding: sla_end_to_end, cluster_capacity") in text
    # only the stage that changed is explained, with the runner-up it beat and why that lost
    assert "runner-up qwen2.5-coder-0.5b b=4 x2 cpu:1 lost: e2e latency would be 6.788s" in text
    assert "detector: yolov10n-416 b=2 x1" not in text
    assert "decided for 0.33 req/s; end-to-end accuracy 0.1871" in lines[-2]
    assert lines[-1].strip() == "llm: qwen2.5-coder-0.5b b=2 x1 cpu:1"


def test_decision_lines_of_an_empty_log():
    assert decision_lines([], 0.0) == []

"""Consistency judges on hand-made completions: rule, reference_likelihood, summaries, config."""

from __future__ import annotations

import math

import pytest

from care.config import ConfigError, validate_config
from care.eval.consistency import consistency_by_level, summarize_consistency
from care.eval.judge_config import make_judge
from care.eval.judges import (
    ConsistencyJudge,
    JudgeItem,
    ReferenceLikelihoodJudge,
    RuleJudge,
    Verdict,
    judge_label,
)
from care.eval.reasoning import answer_letter, option_keys, option_mentions
from care.eval_schema import JudgeConfig

DEMO = ("pick up the red marker", "pick up the green marker", "pick up the purple marker", "pick up the blue marker")


def rule(completion: str, options=DEMO) -> Verdict:
    return RuleJudge().judge([JudgeItem(completion, tuple(options))])[0]


# (completion, options, expected consistent, expected code)
RULE_CASES = [
    # the demo set's own CoT shape
    ("<think>The agent walks to the purple marker.</think><answer>C</answer>", DEMO, True, "judged"),
    ("<think>The agent walks to the purple marker.</think><answer>A</answer>", DEMO, False, "judged"),
    ("<think>The agent walks to the red marker.</think>\n<answer> A </answer><|im_end|>", DEMO, True, "judged"),
    # full option text and letters
    ("<think>I should pick up the blue marker</think><answer>D</answer>", DEMO, True, "judged"),
    ("<think>So the answer is option B.</think><answer>B</answer>", DEMO, True, "judged"),
    ("<think>Clearly (D).</think><answer>D</answer>", DEMO, True, "judged"),
    ("<think>Answer: C</think><answer>B</answer>", DEMO, False, "judged"),
    # several options mentioned: the last one is the conclusion
    ("<think>Not the red one; it walks to the green marker. So B.</think><answer>B</answer>", DEMO, True, "judged"),
    ("<think>Options A and B are far. The agent reaches the blue marker.</think><answer>D</answer>", DEMO, True,
     "judged"),
    ("<think>It walks to the green marker, so B... wait, it is purple.</think><answer>B</answer>", DEMO, False,
     "judged"),
    # letters inside words are not mentions; the article "A" at a sentence start is not a mention
    ("<think>A Bird Could Dance. The agent walks to the green marker.</think><answer>B</answer>", DEMO, True,
     "judged"),
    ("<think>A purple marker is there.</think><answer>C</answer>", DEMO, True, "judged"),
    ("<think>CAB DAD BAD</think><answer>A</answer>", DEMO, None, "no_option_named"),
    ("<think>I choose A because it is closest.</think><answer>A</answer>", DEMO, True, "judged"),
    # colour words inside longer words are not mentions
    ("<think>The reddish floor and bluetooth box.</think><answer>A</answer>", DEMO, None, "no_option_named"),
    # answer given as the option text
    ("<think>walks to the green marker</think><answer>pick up the green marker</answer>", DEMO, True, "judged"),
    # unjudged: no think block, empty think, no answer, answer not an option, nothing named
    ("<answer>C</answer>", DEMO, None, "no_think"),
    ("The agent walks to the purple marker. <answer>C</answer>", DEMO, None, "no_think"),
    ("<think>  </think><answer>C</answer>", DEMO, None, "no_think"),
    ("<think>The agent walks to the purple marker.</think>", DEMO, None, "no_answer"),
    ("<think>The agent walks to the purple marker.</think><answer>C.</answer>", DEMO, None, "answer_not_option"),
    ("<think>The agent walks to the purple marker.</think><answer>E</answer>", DEMO, None, "answer_not_option"),
    ("<think>The agent walks somewhere.</think><answer>C</answer>", DEMO, None, "no_option_named"),
]


@pytest.mark.parametrize(("completion", "options", "consistent", "code"), RULE_CASES)
def test_rule_judge_on_hand_made_completions(completion, options, consistent, code):
    verdict = rule(completion, options)
    assert (verdict.consistent, verdict.code) == (consistent, code), verdict.reason
    assert verdict.judged is (consistent is not None)
    assert verdict.reason


SUBSTRING_OPTIONS = ("pick up the cup", "pick up the cup and the plate", "open the drawer", "close the drawer")


@pytest.mark.parametrize(
    ("think", "expected"),
    [
        ("I will pick up the cup and the plate", "B"),  # the longer option text wins over the one inside it
        ("I will pick up the cup, then leave", "A"),
        ("Pick up the cup and the plate? No: pick up the cup", "A"),
        ("It should open the drawer", "C"),  # key of C is the full text (no shared prefix/suffix)
        ("Close  the\ndrawer now", "D"),  # case and whitespace of option texts are ignored
    ],
)
def test_rule_judge_option_text_substring_of_another(think, expected):
    for letter in "ABCD":
        verdict = rule(f"<think>{think}</think><answer>{letter}</answer>", SUBSTRING_OPTIONS)
        assert verdict.consistent is (letter == expected), (letter, verdict.reason)


def test_option_keys_and_mentions():
    assert option_keys(DEMO) == ["red", "green", "purple", "blue"]
    assert option_keys(["pick up the light blue marker", "pick up the blue marker"]) == ["light", ""]
    # a key inside a longer key: leftmost-longest keeps the longer one
    options = ("take the light blue cup", "take the blue cup", "take the red cup", "take the green cup")
    assert option_keys(options) == ["light blue", "blue", "red", "green"]
    assert [m.letter for m in option_mentions("the light blue one, not the blue one", options)] == ["A", "B"]
    assert rule("<think>It is the light blue cup.</think><answer>A</answer>", options).consistent is True
    # a letter inside an option text does not count on its own
    plan = ("follow plan B", "wait", "go home", "sleep")
    assert [(m.letter, m.matched) for m in option_mentions("I follow plan B", plan)] == [("A", "follow plan B")]
    assert answer_letter("  b ", DEMO) is None  # letters are case-sensitive
    assert answer_letter("A", ["same", "same"]) == "A"
    assert answer_letter("same", ["same", "same"]) is None  # ambiguous text


def test_reference_likelihood_judge():
    judge = ReferenceLikelihoodJudge(threshold=0.6, reference="ema@step300")
    items = [JudgeItem("", (), likelihood=p, sample_id=str(i)) for i, p in enumerate([0.95, 0.6, 0.59, None, math.nan])]
    verdicts = judge.judge(items)
    assert [v.consistent for v in verdicts] == [True, False, False, None, None]
    assert [v.code for v in verdicts] == ["judged", "judged", "judged", "no_likelihood", "no_likelihood"]
    assert judge_label(judge) == "reference_likelihood@v1[reference=ema@step300,threshold=0.6]"
    with pytest.raises(ValueError, match="sample '7'"):
        judge.judge([JudgeItem("", (), likelihood=1.5, sample_id="7")])
    with pytest.raises(ValueError, match="threshold"):
        ReferenceLikelihoodJudge(threshold=1.0)


def test_every_judge_satisfies_the_interface():
    for judge in (RuleJudge(), ReferenceLikelihoodJudge()):
        assert isinstance(judge, ConsistencyJudge)
        assert judge.judge([]) == []


def test_summary_names_its_judge_and_leaves_unjudged_out_of_the_rate():
    completions = [
        "<think>walks to the purple marker</think><answer>C</answer>",  # consistent
        "<think>walks to the red marker</think><answer>C</answer>",  # inconsistent
        "<think>walks to the green marker</think><answer>B</answer>",  # consistent
        "<answer>C</answer>",  # unjudged: no think
        "<think>walks on</think><answer>B</answer>",  # unjudged: nothing named
        "<think>walks to the blue marker</think><answer>D</answer>",  # consistent
    ]
    levels = ["L1", "L1", "L2", "L2", "L2", "L10"]
    judge = RuleJudge()
    verdicts = judge.judge([JudgeItem(c, DEMO) for c in completions])
    table = consistency_by_level(judge, levels, verdicts, include_overall=True)
    assert [(s.level, s.n, s.n_judged, s.n_unjudged, s.n_consistent) for s in table] == [
        ("L1", 2, 2, 0, 1), ("L2", 3, 1, 2, 1), ("L10", 1, 1, 0, 1), ("all", 6, 4, 2, 3)
    ]
    overall = table[-1]
    assert overall.rate == 0.75
    assert overall.unjudged_reasons == {"no_option_named": 1, "no_think": 1}
    # 3/4, Wilson 95 % (hand-computed: centre 0.627527, half 0.326885)
    assert (overall.ci_low, overall.ci_high) == (pytest.approx(0.300642, abs=2e-6), pytest.approx(0.954413, abs=2e-6))
    for record in table:
        row = record.as_dict()
        assert (row["judge"], row["judge_version"], row["judge_label"]) == ("rule", "v1", "rule@v1")

    nothing = summarize_consistency(judge, [Verdict(None, "no_think", "x")], "L3")
    assert math.isnan(nothing.rate) and nothing.n_judged == 0 and nothing.n_unjudged == 1
    with pytest.raises(ValueError, match="1 levels but 2 verdicts"):
        consistency_by_level(judge, ["L1"], verdicts[:2])


def test_judge_config_builds_each_judge_and_rejects_bad_ones():
    assert make_judge(JudgeConfig()).name == "rule"
    judge = make_judge(JudgeConfig(name="reference_likelihood", threshold=0.4, reference="frozen"))
    assert judge_label(judge) == "reference_likelihood@v1[reference=frozen,threshold=0.4]"
    llm = make_judge(validate_config(JudgeConfig, {"name": "llm", "llm": {"base_url": "http://127.0.0.1:9/v1",
                                                                           "model": "judge"}}))
    assert judge_label(llm) == "llm@consistency-judge-v1[model=judge]"
    with pytest.raises(ConfigError, match="needs an `llm:` section"):
        validate_config(JudgeConfig, {"name": "llm"}, "eval.yaml")
    with pytest.raises(ConfigError, match=r"eval\.yaml: name"):
        validate_config(JudgeConfig, {"name": "vibes"}, "eval.yaml")
    with pytest.raises(ConfigError, match="threshold"):
        validate_config(JudgeConfig, {"threshold": 1.2}, "eval.yaml")


def test_rule_judge_is_exact_on_every_demo_completion_shape():
    """Every colour set, truth and answered letter of both demo task families, with the demo's own texts."""
    from itertools import combinations

    from care.data.demo_world import BASE_COLORS, EXTRA_COLORS, option_text, reasoning_text

    judge, checked = RuleJudge(), 0
    for task in ("target", "lamp"):
        for colors in combinations(BASE_COLORS + EXTRA_COLORS, 4):
            options = tuple(sorted(option_text(task, c) for c in colors))  # the validation files' order
            for truth in colors:
                truth_letter = "ABCD"[options.index(option_text(task, truth))]
                think = reasoning_text(task, truth)
                items = [JudgeItem(f"<think>{think}</think><answer>{letter}</answer>", options) for letter in "ABCD"]
                items.append(JudgeItem(f"<think>{think} So {truth_letter}.</think><answer>{truth_letter}</answer>",
                                       options))
                verdicts = judge.judge(items)
                assert [v.consistent for v in verdicts] == [letter == truth_letter for letter in "ABCD"] + [True]
                checked += len(items)
    assert checked == 2 * 70 * 4 * 5

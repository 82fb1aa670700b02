from themis.judge import prompts
from themis.judge.scenarios import get_scenario, load_scenarios


def test_ten_scenarios_with_ordered_criteria() -> None:
    scenarios = load_scenarios()
    assert len(scenarios) == 10
    assert sum(len(s.criteria) for s in scenarios.values()) >= 70
    assert {s.generation for s in scenarios.values()} == {"reference", "role_play"}


def test_single_prompt_has_the_papers_blocks_in_order() -> None:
    s = get_scenario("close_qa")
    p = prompts.render_single_prompt(s, "What is 2+2?", "4")
    text = p.messages[-1]["content"]
    marks = [
        "[Criteria Begin]",
        "[Criteria End]",
        "[Scale Begin]",
        "[Data Begin]",
        "[User Instruction]",
        "[Response]",
        "[Data End]",
        "Steps:",
        "Output format:",
    ]
    positions = [text.index(m) for m in marks]
    assert positions == sorted(positions)
    # criteria appear most important first
    assert text.index(s.criteria[0].name) < text.index(s.criteria[1].name)
    assert "[Reference Answer]" not in text
    assert p.opening == "Overall rating: [[" and p.choices == ("1", "2", "3", "4", "5") and p.closing == "]]"


def test_reference_guided_prompt_adds_reference_and_scale_note() -> None:
    p = prompts.render_single_prompt(get_scenario("math_qa"), "2+2?", "5", reference="4")
    text = p.messages[-1]["content"]
    assert "[Reference Answer]\n4" in text and "better than the reference" in text


def test_pairwise_prompt_shows_both_responses_and_allows_tie() -> None:
    p = prompts.render_pairwise_prompt(get_scenario("open_qa"), "Advice?", "first", "second")
    text = p.messages[-1]["content"]
    assert text.index("[Response A]\nfirst") < text.index("[Response B]\nsecond")
    assert p.choices == ("A", "B", "C") and "tie" in text


def test_classifier_lists_every_scenario_with_a_letter() -> None:
    p = prompts.render_classifier_prompt("Translate 'hi' to French")
    assert p.choices == tuple("ABCDEFGHIJ")
    for s in load_scenarios().values():
        assert s.name in p.messages[-1]["content"]


def test_canonical_verdict_sentences() -> None:
    assert prompts.render_score_verdict(3) == "Overall rating: [[3]]"
    assert prompts.render_pair_verdict("tie") == "Verdict: [[C]]"

import pytest

from themis.judge.parsing import ParseError, parse_instruction, parse_pairwise, parse_scenario, parse_score


@pytest.mark.parametrize(
    ("text", "score"),
    [
        ("Overall rating: [[4]]\nStrengths: clear [[5]]", 4),
        ("Overall rating: [[2]", 2),  # the closing bracket drifted
        ("Overall rating: [[ 5 ]] because", 5),
        ("I would give it a Rating: 3/5. Reasons follow.", 3),
        ("Score: 1", 1),
    ],
)
def test_scores_parse_from_near_misses(text: str, score: int) -> None:
    assert parse_score(text).score == score


def test_rationale_is_what_follows_the_verdict() -> None:
    assert parse_score("Overall rating: [[4]]\nStrengths: short").rationale == "Strengths: short"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty output"),
        (None, "empty output"),
        ("   \n", "empty output"),
        ("The answer is fine.", "no rating found"),
        ("Overall rating: [[7]]", "out of range"),
        ("Overall rating: [[0]]", "out of range"),
        ("Overall rating: [[3.5]]", "out of range"),
        ("Overall rating: [[good]]", "not a number"),
        ("Overall rating: [[33333333333333333", "no rating found"),
    ],
)
def test_malformed_scores_are_rejected_with_a_reason(text, reason: str) -> None:
    with pytest.raises(ParseError, match=reason):
        parse_score(text)


@pytest.mark.parametrize(
    ("text", "winner"),
    [
        ("Verdict: [[A]] A is better", "A"),
        ("Verdict: [[B]]", "B"),
        ("Verdict: [[C]]", "tie"),
        ("[[tie]]", "tie"),
        ("Verdict: [[b]", "B"),
    ],
)
def test_pairwise_verdicts(text: str, winner: str) -> None:
    assert parse_pairwise(text).winner == winner


@pytest.mark.parametrize("text", ["Verdict: [[D]]", "A is better", "", "Verdict: [[AB]]"])
def test_bad_pairwise_verdicts(text: str) -> None:
    with pytest.raises(ParseError):
        parse_pairwise(text)


def test_scenario_letters_map_to_ids() -> None:
    ids = ["close_qa", "open_qa", "math_qa"]
    assert parse_scenario("Scenario: [[B]]", ids) == "open_qa"
    with pytest.raises(ParseError, match="out of range"):
        parse_scenario("Scenario: [[J]]", ids)
    with pytest.raises(ParseError, match="no scenario"):
        parse_scenario("open qa", ids)


def test_instruction_labels_and_quotes_are_stripped() -> None:
    assert parse_instruction('Instruction: "What is the boiling point of water at sea level?"', 5) == (
        "What is the boiling point of water at sea level?"
    )
    with pytest.raises(ParseError, match="too short"):
        parse_instruction("Question: Hi", 10)

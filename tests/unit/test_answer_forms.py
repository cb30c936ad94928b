"""Answer forms the scorer must get right: extraction from responses, then math-verify's judgement.

Several asserts pin math-verify 0.9 behaviour that is lenient or blind (commented where so); if an
upgrade changes them, the verifier version (and so every curate cache key) must change too.
"""

from __future__ import annotations

import pytest

from mixray.grading.extract import extract_answer, last_boxed, last_number
from mixray.grading.verify import VERIFIER_VERSION, is_correct, is_correct_gsm8k


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("\\boxed{\\frac{3}{4}}", "\\frac{3}{4}"),
        ("\\boxed{\\dfrac{\\sqrt{3}}{2}}", "\\dfrac{\\sqrt{3}}{2}"),
        ("\\boxed{\\left\\{1, \\frac{1}{2}\\right\\}}", "\\left\\{1, \\frac{1}{2}\\right\\}"),
        ("first \\boxed{2}, on reflection \\boxed{3}", "3"),  # the last box counts
        ("\\boxed{4} and \\fbox{5}", "5"),
        ("\\boxed{}", ""),  # empty: extract_answer then falls back to other forms
        # A piecewise answer opens an escaped brace it never closes; escapes are not groups.
        ("\\boxed{\\left\\{\\begin{array}{ll}x & x>0\\\\0 & x\\le 0\\end{array}\\right.}",
         "\\left\\{\\begin{array}{ll}x & x>0\\\\0 & x\\le 0\\end{array}\\right."),
    ],
)
def test_last_boxed(text: str, expected: str | None) -> None:
    assert last_boxed(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Final Answer: \\boxed{(1, 2]}", "(1, 2]"),
        ("Final Answer: The final answer is $\\frac{1}{2}$. I hope it is correct.", "\\frac{1}{2}"),
        ("Final Answer: Tuesday.", "Tuesday"),
        ("Final Answer: 18\nWait, let me check 19 more times.", "18"),
        ("an empty box \\boxed{} then the total 12", "12"),
        ("I give up.", None),  # no answer at all
    ],
)
def test_extract_answer_forms(text: str, expected: str | None) -> None:
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    ("predicted", "gold"),
    [
        ("\\frac{3}{4}", "0.75"), ("\\dfrac{3}{4}", "3/4"), ("\\tfrac34", "\\frac{3}{4}"),
        ("-\\frac{1}{2}", "-0.5"), ("\\frac{-1}{2}", "-1/2"), ("5.00", "5"),
        ("2\\sqrt{2}", "\\sqrt{8}"),
        ("5 \\text{ cm}", "5"), ("5\\text{ inches}", "5"), ("5\\,\\text{cm}", "5"),  # units dropped
        ("30^\\circ", "30"), ("30^{\\circ}", "30"), ("30°", "30"), ("10^{\\circ}C", "10"),
        ("1,000", "1000"), ("1{,}000", "1000"), ("1\\,000", "1000"), ("12\\,345\\,678", "12345678"),
        ("(1, 2]", "(1,2]"), ("(-\\infty, 3)", "(-\\infty,3)"), ("[1,2]", "1 \\le x \\le 2"),
        ("\\{3, 2, 1\\}", "\\{1,2,3\\}"), ("3, 1, 2", "1,2,3"),
        ("\\text{Tuesday}", "\\text{Tuesday}"), ("\\textbf{(C)}", "C"), ("(C)", "\\text{(C)}"),
        ("x = 3", "3"),  # an equation's right-hand side counts
    ],
)
def test_equivalent_forms_verify(predicted: str, gold: str) -> None:
    assert is_correct(predicted, gold)


@pytest.mark.parametrize(
    ("predicted", "gold"),
    [
        ("\\frac{1}{2}", "\\frac{1}{3}"), ("0.333", "1/3"), ("-3", "3"),
        ("30^\\circ", "31"), ("1\\,000", "0"),  # unnormalised, math-verify reads 1\,000 as 1*0 = 0
        ("(1,2]", "[1,2]"), ("[1,2)", "(1,2]"), ("\\{1,2\\}", "\\{1,3\\}"),
        ("\\text{Monday}", "\\text{Tuesday}"), ("A", "B"), ("3", "0.03"),
        ("\\pi", "3.14159"),  # math-verify does not evaluate pi numerically
        ("", "3"), (None, "3"),
    ],
)
def test_different_answers_do_not_verify(predicted: str | None, gold: str) -> None:
    assert not is_correct(predicted, gold)


def test_percent_is_lenient_both_ways() -> None:
    # math-verify accepts "50\%" for both 50 and 0.5 (it tries the percent with and without /100).
    assert is_correct("50\\%", "50") and is_correct("50%", "50") and is_correct("50\\%", "0.5")
    assert not is_correct("50\\%", "51")


def test_known_leniencies_of_math_verify() -> None:
    # An open interval and a two-element set/tuple are not told apart.
    assert is_correct("(1,2)", "\\{1,2\\}")
    # Numbers are compared after rounding to 6 decimals (STACK.md).
    assert is_correct("0.5000001", "1/2")
    # Bare words parse as products of symbols, yet compare equal to the \text{} form; text case is
    # ignored.
    assert is_correct("Tuesday", "\\text{Tuesday}") and is_correct("\\text{apple}", "\\text{Apple}")


def test_known_blind_spots_of_math_verify() -> None:
    # A number and unit inside one \text{} parse as a product "5cm" and do not equal 5.
    assert not is_correct("\\text{5 cm}", "5")
    # Unparsable answers fall back to exact text comparison.
    assert is_correct("a~b", "a~b") and not is_correct("a~b", "a~c")


def test_verifier_version_names_mixray_revision() -> None:
    assert VERIFIER_VERSION.startswith("math-verify-") and VERIFIER_VERSION.endswith("-mixray-2")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The total is $1,234.50.", "1234.50"),
        ("she has 1,000,000 grains of sand", "1000000"),
        ("so the answer is 18 dollars per week", "18"),
        ("It dropped to -5 degrees", "-5"),
        ("It dropped to \u22127 degrees", "-7"),  # unicode minus
        ("pages 3-4", "4"),
        ("Costs:\n- 5 apples", "5"),  # a list bullet is not a minus sign
        ("a loss of -$5", "-5"),  # a hyphen in a range is not a minus sign
        ("the list 1,2,3", "3"),  # commas not in thousands groups separate numbers
        ("Natalia sold 48/2 = 24 clips.\n#### 72", "72"),
        ("0.5 of it, then .25", ".25"),
        ("no numbers here", None),
    ],
)
def test_last_number(text: str, expected: str | None) -> None:
    assert last_number(text) == expected


@pytest.mark.parametrize(
    ("predicted", "gold", "ok"),
    [
        ("The answer is $1,234.50 in total.", "1234.5", True),
        ("1,234", "#### 1234", True),
        ("18.0", "18", True),
        ("-3 degrees", "-3", True),
        ("3", "-3", False),
        ("17", "18", False),
        ("no idea", "18", False),
        (None, "18", False),
        ("0.1", "0.10000001", False),  # exact decimal comparison, no float tolerance
    ],
)
def test_is_correct_gsm8k(predicted: str | None, gold: str, ok: bool) -> None:
    assert is_correct_gsm8k(predicted, gold) is ok


def test_is_correct_gsm8k_rejects_gold_without_number() -> None:
    with pytest.raises(ValueError, match="no number"):
        is_correct_gsm8k("3", "none")

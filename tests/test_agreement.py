"""kd_ref.agreement: the lessons' cmp helper and its one-line groups."""
import numpy as np
import pytest
import torch

from kd_ref.agreement import agree, cmp, compare_values


def test_cmp_prints_one_line_and_floors_tiny_differences(capsys):
    a = torch.tensor([0.1, 0.2], dtype=torch.float64)
    assert cmp("same numbers", a, a + 1e-16) is None          # a lesson cell ending in cmp shows no repr
    line = capsys.readouterr().out
    result = compare_values("same numbers", a, a + 1e-16)
    assert line.count("\n") == 1
    assert "exact: True " in line and "approx: True " in line and "maxdiff: < 1e-12" in line
    assert result.ok and result.exact and result.approx


def test_cmp_reports_a_real_difference():
    result = compare_values("off", [1.0, 2.0], [1.0, 2.001])
    assert not result.ok and not result.approx and result.exact is False
    assert result.shown_maxdiff() == "1.0e-03"
    assert compare_values("off", [1.0, 2.0], [1.0, 2.001], atol=1e-2).approx


def test_cmp_accepts_tensors_with_gradients_numpy_and_numbers():
    x = torch.tensor([1.5], requires_grad=True)
    assert compare_values("grad", x * 2, np.array([3.0])).ok
    assert compare_values("scalar", 3.0, torch.tensor(3.0)).ok
    assert compare_values("broadcast", torch.ones(2, 3), 1.0).ok
    with pytest.raises(ValueError, match="do not broadcast"):
        compare_values("shapes", torch.ones(2), torch.ones(3))


def test_exact_is_optional_and_nan_agrees_only_with_nan():
    assert compare_values("fd", [1.0], [1.0 + 1e-9], atol=1e-8, exact=False).exact is None
    assert compare_values("fd", [1.0], [1.0 + 1e-9], atol=1e-8, exact=False).ok
    assert compare_values("nan", [float("nan"), 1.0], [float("nan"), 1.0]).ok
    assert not compare_values("nan", [float("nan")], [1.0]).ok


def test_a_group_prints_one_line_when_all_agree(capsys):
    with agree("softmax two ways") as check:
        for T in (1.0, 2.0, 4.0):
            z = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
            check(f"T={T}", torch.softmax(z / T, -1), torch.exp(z / T) / torch.exp(z / T).sum())
    out = capsys.readouterr().out
    assert out == "softmax two ways: 3 of 3 agree | exact: 3 of 3 | maxdiff: < 1e-12\n"
    assert check.ok


def test_a_group_lists_the_checks_that_fail(capsys):
    with agree("mixed", atol=1e-6) as check:
        check("good", 1.0, 1.0)
        check("bad", 1.0, 1.1)
        check("loose", 1.0, 1.0 + 1e-9, exact=False)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "mixed: 2 of 3 agree | exact: 1 of 2 | maxdiff: 1.0e-01"
    assert len(lines) == 2 and lines[1].startswith("  DISAGREES: bad") and not check.ok


def test_an_empty_group_says_so(capsys):
    with agree("nothing"):
        pass
    assert capsys.readouterr().out == "nothing: no checks were run\n"

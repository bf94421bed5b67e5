"""What each exercise forbids in its answers, and the grader's static scan of a learner's code for it.

Two guards, both per question (a forbidden shortcut costs that question only):

* **dynamic**, in the kernel, while one of the question's answers is called by a check: the
  listed ``kd_ref`` functions and classes are disabled in place (see :mod:`.harness`), which
  catches every import form (``import kd_ref``, ``from kd_ref.losses import kd_loss as k``,
  ``importlib``, a reference kept from an earlier cell); listed torch operations (``softmax``)
  raise through a ``TorchFunctionMode``, which catches ``torch.softmax``, ``F.softmax``,
  ``Tensor.softmax``, ``nn.Softmax`` and ``torch._C._VariableFunctions.softmax`` alike;
* **static**, in the grader's own process (the learner's kernel cannot touch it): the code
  cells of the question's section of the notebook are parsed, and any import of, or
  reference to, a forbidden module or name scores the question 0, used or not.
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field

import nbformat

SOFTMAX_OPS = ("softmax", "log_softmax", "_softmax", "_log_softmax", "special_softmax", "special_log_softmax")


@dataclass(frozen=True)
class Rule:
    """What one question forbids."""
    modules: tuple[str, ...] = ()          # static: never imported or named in the question's cells
    names: tuple[str, ...] = ()            # static: attribute or name never used in the question's cells
    oracle: tuple[str, ...] = ()           # dynamic: kd_ref objects disabled while the answers run
    ops: tuple[str, ...] = ()              # dynamic: torch functions that raise while the answers run


_KD = ("kd_ref",)
RULES: dict[str, dict[str, Rule]] = {
    "ex01_softmax_temperature": {
        "q1": Rule(_KD, ("softmax", "log_softmax", "Softmax", "LogSoftmax"), ("kd_ref.softmax_t", "kd_ref.log_softmax_t"),
                   SOFTMAX_OPS),
        "q2": Rule(_KD, (), ("kd_ref.softmax_t", "kd_ref.log_softmax_t")),
        "q3": Rule(_KD, (), ("kd_ref.softmax_t", "kd_ref.log_softmax_t")),
    },
    "ex02_kd_loss": {
        "q1": Rule(_KD, (), ("kd_ref.kd_loss", "kd_ref.soft_cross_entropy", "kd_ref.distillation_loss")),
        "q2": Rule(_KD, (), ("kd_ref.kd_loss", "kd_ref.distillation_loss", "kd_ref.teacher_forward")),
        "q3": Rule(_KD, (), ("kd_ref.kd_loss", "kd_ref.soft_cross_entropy", "kd_ref.softmax_t")),
        "q4": Rule(_KD, (), ("kd_ref.kd_loss", "kd_ref.softmax_t")),
    },
    "ex03_hints_and_hooks": {
        "q1": Rule(_KD, (), ("kd_ref.hint_loss", "kd_ref.ConvRegressor")),
        "q2": Rule(_KD, (), ("kd_ref.FeatureHooks",)),
    },
    "ex04_attention": {
        "q1": Rule(_KD, (), ("kd_ref.attention_map", "kd_ref.at_loss")),
        "q2": Rule(_KD, (), ("kd_ref.at_loss",)),            # its checks put kd_ref.attention_map in place of q1's
        "q3": Rule(_KD, (), ("kd_ref.attention_kl_loss",)),
    },
    "ex05_relations": {
        "q1": Rule(_KD, (), ("kd_ref.rkd_distance_loss", "kd_ref.rkd_loss")),
        "q2": Rule(_KD, (), ("kd_ref.rkd_angle_loss", "kd_ref.rkd_loss")),
        "q3": Rule(_KD, (), ("kd_ref.sp_loss",)),
    },
    "ex06_feature_kd_step": {
        "q1": Rule((), ("FeatureHooks",), ("kd_ref.FeatureHooks",)),
        "q2": Rule((), ("at_loss", "attention_map"), ("kd_ref.at_loss", "kd_ref.attention_map")),
    },
    "ex07_token_kd": {
        "q1": Rule((), ("kd_loss", "soft_cross_entropy"), ("kd_ref.kd_loss", "kd_ref.soft_cross_entropy")),
        "q2": Rule((), ("hidden_state_loss",), ("kd_ref.hidden_state_loss",)),
    },
    "ex08_on_policy_distillation": {
        "q1": Rule((), ("generalized_jsd_loss", "reverse_kl_loss", "kd_loss", "skew_kl_loss", "skew_reverse_kl_loss"),
                   ("kd_ref.generalized_jsd_loss", "kd_ref.reverse_kl_loss", "kd_ref.kd_loss")),
        # its checks put kd_ref.generalized_jsd_loss in place of q1's answer: only the static scan here
        "q2": Rule((), ("generalized_jsd_loss", "reverse_kl_loss", "OnPolicyKD", "sample_continuations"), ()),
    },
}


def rule_for(assignment: str, question: str) -> Rule:
    return RULES.get(assignment, {}).get(question, Rule())


def question_sections(nb: nbformat.NotebookNode) -> dict[str, list[str]]:
    """The code of each question's section of a learner notebook: the cells from its heading to the next.

    Questions are found by their markdown heading ``## Question N``, the form of every master.
    """
    sections: dict[str, list[str]] = {}
    current, in_tests = None, False
    for cell in nb.cells:
        if cell.cell_type == "raw":                    # a master: its test cells are not the learner's code
            in_tests = {"# BEGIN TESTS": True, "# END TESTS": False}.get(cell.source.strip(), in_tests)
        elif cell.cell_type == "markdown":
            found = re.search(r"^#+\s*Question\s+(\d+)", cell.source, re.MULTILINE)
            if found:
                current = f"q{found.group(1)}"
                sections.setdefault(current, [])
            elif re.search(r"^#+\s*What to remember", cell.source, re.MULTILINE):
                current = None
        elif cell.cell_type == "code" and current is not None and not in_tests:
            sections[current].append(cell.source)
    return sections


def _constant_strings(tree: ast.AST) -> list[str]:
    strings = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    for node in ast.walk(tree):                       # "kd_" + "ref": constant concatenations too
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            try:
                value = ast.literal_eval(node)
            except (ValueError, SyntaxError, TypeError):
                continue
            if isinstance(value, str):
                strings.append(value)
    return strings


def static_findings(code: str, rule: Rule) -> list[str]:
    """What of ``rule`` the source ``code`` imports or names (IPython magics are ignored)."""
    source = "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in code.splitlines())
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []                                    # a cell that does not parse runs as an error anyway
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if a.name.split(".")[0] in rule.modules]
            found += [f"import {a.name}" for a in node.names if a.name.split(".")[-1] in rule.names]
        elif isinstance(node, ast.ImportFrom):
            if (node.module or "").split(".")[0] in rule.modules:
                found.append(f"from {node.module} import ...")
            found += [f"from {node.module} import {a.name}" for a in node.names if a.name in rule.names]
        elif isinstance(node, ast.Name) and (node.id in rule.modules or node.id in rule.names):
            found.append(f"name {node.id}")
        elif isinstance(node, ast.Attribute) and node.attr in rule.names:
            found.append(f"attribute .{node.attr}")
    for text in _constant_strings(tree):
        if any(re.search(rf"\b{re.escape(m)}\b", text) for m in rule.modules):
            found.append(f"string {text!r}")
    return sorted(set(found))


def forbidden_uses(nb: nbformat.NotebookNode, assignment: str) -> dict[str, list[str]]:
    """For each question, what its section's code uses that the exercise forbids there."""
    uses = {}
    for question, cells in question_sections(nb).items():
        rule = rule_for(assignment, question)
        if rule.modules or rule.names:
            found = sorted({f for cell in cells for f in static_findings(cell, rule)})
            if found:
                uses[question] = found
    return uses

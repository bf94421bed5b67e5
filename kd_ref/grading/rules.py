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
_SOFTMAX_NAMES = ("softmax", "log_softmax", "Softmax", "LogSoftmax")
# Every public function of the oracle that computes a probability or a loss: an answer that calls any of
# them (e.g. reverse_kl_loss with its arguments swapped, generalized_jsd_loss at beta = 0, or
# distillation_loss with ce_weight = 0, each equal to kd_loss) is not the learner's own.
_ORACLE_LOSSES = ("kd_ref.softmax_t", "kd_ref.log_softmax_t", "kd_ref.kd_loss", "kd_ref.soft_cross_entropy",
                  "kd_ref.distillation_loss", "kd_ref.dkd_loss", "kd_ref.reverse_kl_loss",
                  "kd_ref.generalized_jsd_loss", "kd_ref.skew_kl_loss", "kd_ref.skew_reverse_kl_loss",
                  "kd_ref.losses.logits._kl_rows", "kd_ref.losses.cross_entropy.masked_cross_entropy",
                  "kd_ref.teacher_forward")
_EX01 = Rule(_KD, _SOFTMAX_NAMES, ("kd_ref.softmax_t", "kd_ref.log_softmax_t"))
_EX02 = Rule(_KD, (), _ORACLE_LOSSES)
RULES: dict[str, dict[str, Rule]] = {
    # ex01: no kd_ref and no built-in softmax in any question's code (the learner's own softmax_t is the
    # point); q1's softmax_t is also run with the softmax operations disabled, whatever their name. Later
    # questions call the learner's softmax_t, so they are not charged again for what q1 did.
    "ex01_softmax_temperature": {"q1": Rule(_KD, _SOFTMAX_NAMES, _EX01.oracle, SOFTMAX_OPS),
                                 "q2": _EX01, "q3": _EX01, "q4": _EX01},
    # ex02: no kd_ref in any import form, nor any of its losses, in any question
    "ex02_kd_loss": {"q1": _EX02, "q2": _EX02, "q3": _EX02, "q4": _EX02, "q5": _EX02},
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
    # ex06: q1 rebuilds the device pipeline's crop and flip, checked against torchvision (not to be called
    # in the answer); q2 rebuilds fidelity and the predictive KL. q3 may use kd_ref's hooks and losses.
    "ex06_feature_kd_step": {
        "q1": Rule(("torchvision",), ("crop_flip", "pad_channels_last"),
                   ("kd_ref.data.device_pipeline.crop_flip", "kd_ref.data.device_pipeline.pad_channels_last")),
        "q2": Rule((), ("kd_loss", "soft_cross_entropy"),
                   ("kd_ref.metrics.fidelity", "kd_ref.metrics.accuracy", *_ORACLE_LOSSES)),
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
    # ex09: no kd_ref in the answers' cells; while they run, the cached loss (and every loss of the
    # oracle, any of which could stand in for it at k = C) and the report's interval functions are disabled
    "ex09_cached_teacher": {
        "q1": Rule(_KD, (), ("kd_ref.losses.cached.cached_kd_loss", "kd_ref.losses.cached.topk_targets",
                             "kd_ref.losses.cached._log_rest", *_ORACLE_LOSSES)),
        "q2": Rule(_KD, (), ("kd_ref.report.paired_effect", "kd_ref.report.compare", "kd_ref.report.effect_lines",
                             "kd_ref.report.t_quantile")),
    },
    # ex10: no kd_ref in the answers (its compress module is the oracle the checks compare with)
    "ex10_low_rank": {
        "q1": Rule(_KD, (), ("kd_ref.compress.low_rank_linear", "kd_ref.compress.low_rank_conv2d",
                             "kd_ref.compress._truncated_factors", "kd_ref.compress.factorize")),
        "q2": Rule(_KD, (), ("kd_ref.compress.low_rank_error", "kd_ref.compress.factorize")),
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


def _parse(code: str) -> ast.AST | None:
    source = "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in code.splitlines())
    try:
        return ast.parse(source)
    except SyntaxError:
        return None                                  # a cell that does not parse runs as an error anyway


def module_aliases(cells: list[str], modules: tuple[str, ...]) -> set[str]:
    """Names that any of ``cells`` binds to ``modules`` or to something imported from them.

    ``import kd_ref as k`` binds ``k``; ``from kd_ref.losses import kd_loss as f`` binds ``f``. A
    question whose own cells use such a name uses the forbidden module, wherever it was imported
    (an answer stored as a value, computed in the question's cell, never runs under the kernel's guard).
    """
    aliases: set[str] = set()
    for code in cells:
        tree = _parse(code)
        for node in ast.walk(tree) if tree is not None else ():
            if isinstance(node, ast.Import):
                aliases |= {(a.asname or a.name.split(".")[0]) for a in node.names if a.name.split(".")[0] in modules}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in modules:
                aliases |= {a.asname or a.name for a in node.names}
    return aliases


def static_findings(code: str, rule: Rule, aliases: frozenset[str] = frozenset()) -> list[str]:
    """What of ``rule`` the source ``code`` imports or names (IPython magics are ignored).

    ``aliases``: names bound elsewhere in the notebook to a forbidden module (:func:`module_aliases`).
    """
    tree = _parse(code)
    if tree is None:
        return []
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
        elif isinstance(node, ast.Name) and node.id in aliases:
            found.append(f"name {node.id} (imported from {'/'.join(rule.modules)} in another cell)")
        elif isinstance(node, ast.Attribute) and node.attr in rule.names:
            found.append(f"attribute .{node.attr}")
    for text in _constant_strings(tree):
        if any(re.search(rf"\b{re.escape(m)}\b", text) for m in rule.modules):
            found.append(f"string {text!r}")
    return sorted(set(found))


def forbidden_uses(nb: nbformat.NotebookNode, assignment: str) -> dict[str, list[str]]:
    """For each question, what its section's code uses that the exercise forbids there."""
    uses = {}
    every_cell, in_tests = [], False                   # the learner's code: a master's checks left out
    for cell in nb.cells:
        if cell.cell_type == "raw":
            in_tests = {"# BEGIN TESTS": True, "# END TESTS": False}.get(cell.source.strip(), in_tests)
        elif cell.cell_type == "code" and not in_tests:
            every_cell.append(cell.source)
    for question, cells in question_sections(nb).items():
        rule = rule_for(assignment, question)
        if rule.modules or rule.names:
            aliases = frozenset(module_aliases(every_cell, rule.modules)) if rule.modules else frozenset()
            found = sorted({f for cell in cells for f in static_findings(cell, rule, aliases)})
            if found:
                uses[question] = found
    return uses

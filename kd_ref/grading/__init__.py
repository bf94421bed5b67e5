"""Graded exercises: learner notebooks generated from solved masters, and a local grader.

``solutions/exNN_*.ipynb`` are otter-assign masters (solutions and tests, both
public and hidden); ``exercises/exNN_*.ipynb`` are generated from them
(:func:`build_exercises`); :func:`grade_notebook` scores a learner's notebook
against the master's tests, locally, with a time limit per question.
"""
from .assign import build_exercises, learner_notebook, master_for, question_tests
from .grade import GradeReport, grade_notebook
from .gradebook import Gradebook, grade_folder

__all__ = ["build_exercises", "learner_notebook", "master_for", "question_tests", "GradeReport", "grade_notebook",
           "Gradebook", "grade_folder"]

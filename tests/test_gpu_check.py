"""``kd-ref bench gpu`` / ``make gpu-check`` and the gpu profiles, on the CPU.

No GPU is needed here: (1) the check exits 0 and says so without CUDA, importing nothing
the device image lacks (SciPy, scikit-learn, Jupyter: blocked in a fresh process); (2) its
code runs end to end on the CPU with the gpu configs swapped for tiny ones; (3) every gpu
profile config, CIFAR (both protocols, every method) and text (every student), is built at
its real size and takes one training step on a tiny batch, so a GPU user never meets a
config that cannot start.
"""
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from kd_ref.distillers import Scratch
from kd_ref.models import CharGPT
from kd_ref.models.resnet_cifar import cifar_resnet
from kd_ref.recipes import cifar as cifar_recipe, gpu_check, text as text_recipe

REPO = Path(__file__).resolve().parents[1]
BLOCKED = ("scipy", "sklearn", "nbformat", "otter", "matplotlib", "pandas", "IPython", "nbclient")

RUN_BLOCKED = f"""
import runpy, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED!r}:
            raise ModuleNotFoundError("No module named " + repr(name) + " (not on the GPU image)")
sys.meta_path.insert(0, Block())
import kd_ref.recipes.gpu_check, kd_ref.recipes.cifar, kd_ref.recipes.text, kd_ref.models, kd_ref.sequence_distillers
sys.argv = ["kd-ref", "bench", "gpu"]
runpy.run_module("kd_ref", run_name="__main__")
"""


def test_make_gpu_check_without_cuda_says_so_and_exits_0_with_only_torch_numpy_tqdm():
    env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run([sys.executable, "-c", RUN_BLOCKED], capture_output=True, text=True, timeout=120,
                         env=env, cwd=REPO)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "CUDA available: False" in run.stdout and "no CUDA device: nothing measured" in run.stdout


def test_the_makefile_has_a_gpu_check_target_that_needs_no_install():
    makefile = (REPO / "Makefile").read_text()
    target = makefile[makefile.index("\ngpu-check:"):].split("\n\n")[0]
    assert "PYTHONPATH=. $(GPU_PYTHON) -m kd_ref bench gpu" in target and "$(STAMP)" not in target.splitlines()[1]
    assert "GPU_PYTHON := $(if $(wildcard $(PY)),$(PY),$(PYTHON))" in makefile     # the venv, else python3


@pytest.mark.usefixtures("one_thread")
def test_the_check_runs_end_to_end_on_the_cpu_with_tiny_configs(monkeypatch, capsys):
    tiny_cifar = replace(cifar_recipe.CONFIGS["smoke"], batch_size=64)
    monkeypatch.setitem(cifar_recipe.CONFIGS, "gpu", tiny_cifar)
    monkeypatch.setitem(text_recipe.CONFIGS, "gpu", replace(text_recipe.CONFIGS["smoke"], batch_size=4))
    assert gpu_check.run_check(steps=1, device="cpu", images=128, skip={"torch.compile"}) == 0
    out = capsys.readouterr().out
    for expected in ("cifar gpu profile, teacher", "cifar gpu profile, kd", "images/s", "s per epoch of 45,000",
                     "bf16 vs fp32, KD student", "gradient cosine", "text gpu profile, teacher",
                     "text gpu profile, kd", "tokens/s", "estimate: one seed", "[torch.compile] skipped",
                     "every phase ran"):
        assert expected in out, (expected, out)
    cosine = float(out.split("gradient cosine ")[1].split(",")[0])
    assert 0.9 < cosine <= 1.0 + 1e-6                 # bf16 gradients point where the fp32 ones do


def _one_step(distiller, x, y):
    params = [p for p in distiller.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    distiller.train()
    _, terms = distiller(x, y)
    loss = sum(terms.values())
    assert torch.isfinite(loss), terms
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, params))


@pytest.mark.slow             # full-size networks on the CPU: make test, not make unit
@pytest.mark.parametrize("protocol", cifar_recipe.PROTOCOLS)
def test_every_cifar_gpu_config_builds_and_takes_one_step_on_the_cpu(protocol):
    course = cifar_recipe.CONFIGS["gpu"]
    config = cifar_recipe.with_protocol(course, protocol)
    torch.manual_seed(0)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 100, (4,))        # CIFAR-100, a batch of 4 (RKD needs 3)
    teacher = cifar_resnet(config.teacher, 100)
    _one_step(Scratch(teacher), x, y)
    # the course protocol builds every method; another protocol only those whose weights it changes (the
    # networks are the same, and full-size networks on the CPU are the cost of this test)
    names = ["scratch", *cifar_recipe.METHODS] if protocol == "course" else [
        name for name in cifar_recipe.METHODS
        if config.weights.get(name) != course.weights.get(name)]
    assert names, f"protocol {protocol} changes no method's weights: nothing of its own to check"
    for name in names:
        student = cifar_resnet(config.student, 100)
        with cifar_recipe.make_distiller(name, student, teacher, config, x) as distiller:
            _one_step(distiller, x, y)


@pytest.mark.slow
def test_every_text_gpu_config_builds_and_takes_one_step_on_the_cpu():
    config = text_recipe.CONFIGS["gpu"]
    torch.manual_seed(0)
    teacher = CharGPT(config.model(90, "teacher"))
    ids = torch.randint(0, 90, (1, config.context + 1))                  # one sequence of the full context
    x, y = ids[:, :-1], ids[:, 1:]
    _one_step(Scratch(teacher, padding=True), x, y)
    for name in text_recipe.METHODS:
        student = CharGPT(config.model(90, "student"))
        _one_step(text_recipe.make_distiller(name, student, teacher, config), x, y)

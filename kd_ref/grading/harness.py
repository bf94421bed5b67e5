"""The code the grader sends into a kernel to run one check: it records the answers' outputs, nothing else.

This file is never imported by the kernel: the grader reads its text and executes it in a
private namespace, after the learner's cells (see :mod:`kd_ref.grading.grade`). It needs
only the standard library and torch.

One check is a test function of an otter test file (the master's public or hidden check).
:func:`run_check` calls it with the kernel's objects of the names it takes, each function or
class wrapped so that every call of the answer is recorded: the call's output, and, when the
check ends, the state of every tensor and module the answer was given or made (gradients,
buffers, training mode, hooks left registered). The record is written with ``torch.save`` to a
file the grader named; the grader loads it with ``weights_only=True`` and compares it with the
record of the same check run on the master's solution, on the same inputs.

The check's own assertions still run here (their messages are the learner's feedback), but
the grader never trusts their verdict: whatever this kernel reports, a check passes only when
the recorded outputs equal the reference's. For hidden checks, every seed the check sets is
mixed with a salt the grader draws at grading time, so their inputs cannot be known in advance.
While an answer runs, the oracle functions its question forbids are disabled in place (their
code objects are swapped, so every import form is caught), and forbidden torch operations
raise through a ``TorchFunctionMode``; an attempted forbidden call is recorded.
"""


def run_check(user_ns, source, name, params, salt, forbidden, forbidden_ops, out_path):
    import hashlib
    import importlib
    import sys
    import types

    import torch
    from torch import nn
    from torch.overrides import TorchFunctionMode

    def mix(seed):
        if salt is None and isinstance(seed, int):
            return seed
        return int(hashlib.sha256(f"{salt}:{seed}".encode()).hexdigest()[:15], 16)

    class ForbiddenCall(Exception):
        pass

    attempts = []
    marker = "forbidden in this answer"
    stubs = {}                    # a stub without free variables: it may take the place of any plain function's code
    exec(f"def stub(*args, **kwargs):\n    raise RuntimeError('this question forbids calling the oracle (kd_ref): {marker}')",
         stubs)
    stub = stubs["stub"]

    def resolve(dotted):
        module, _, attr = dotted.rpartition(".")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):
            return None

    class Guard:
        """Forbidden functions and classes disabled while an answer runs, whatever name they were imported under."""

        def __enter__(self):
            self.saved = []
            for dotted in forbidden:
                obj = resolve(dotted)
                if isinstance(obj, types.FunctionType) and not obj.__closure__:
                    self.saved.append((obj, "__code__", obj.__code__))
                    obj.__code__ = stub.__code__.replace(co_name=obj.__name__)
                elif isinstance(obj, type):
                    for method in ("__init__", "__call__", "forward"):
                        if method in vars(obj):
                            self.saved.append((obj, method, vars(obj)[method]))
                            setattr(obj, method, stub)
            self.mode = None
            if forbidden_ops:
                outer = self

                class NoForbiddenOps(TorchFunctionMode):
                    def __torch_function__(self, func, types_, args=(), kwargs=None):
                        if getattr(func, "__name__", "") in forbidden_ops:
                            attempts.append(func.__name__)
                            raise ForbiddenCall(f"this question forbids {func.__name__}: {marker}")
                        return func(*args, **(kwargs or {}))
                self.mode = NoForbiddenOps()
                self.mode.__enter__()
            return self

        def __exit__(self, *exc):
            if self.mode is not None:
                self.mode.__exit__(*exc)
            for obj, attr, value in reversed(self.saved):
                setattr(obj, attr, value)
            if exc[0] is not None and marker in str(exc[1]) and str(exc[1]) not in attempts:
                attempts.append(str(exc[1]))
            return False

    # What is recorded: plain data only (tensors, numbers, strings, None, lists, tuples of those).
    def plain(x, depth=0):
        if depth > 6:
            return ("deep",)
        if isinstance(x, torch.Tensor):
            return ("tensor", x.detach().cpu().clone())
        if x is None or isinstance(x, (bool, int, float, str)):
            return x
        if type(x).__module__ == "numpy":
            if hasattr(x, "shape") and getattr(x, "ndim", 0):
                return ("tensor", torch.as_tensor(x.tolist()))
            return x.item() if hasattr(x, "item") else ("other", type(x).__name__)
        if isinstance(x, (list, tuple)):
            return ("seq", [plain(v, depth + 1) for v in x])
        if isinstance(x, dict):          # in key order: a dict's insertion order is not part of the answer
            return ("dict", sorted(((str(k), plain(v, depth + 1)) for k, v in x.items()), key=lambda kv: kv[0]))
        if isinstance(x, nn.Module):
            return module_state(x)
        if hasattr(x, "__dict__") and not callable(x):
            return ("object", [(k, plain(v, depth + 1)) for k, v in sorted(vars(x).items()) if not k.startswith("_")])
        return ("other", type(x).__name__)

    def module_state(m):
        hooks = sum(len(s._forward_hooks) + len(s._forward_pre_hooks) + len(s._backward_hooks) for s in m.modules())
        return ("module", [s.training for s in m.modules()],
                [(k, ("tensor", v.detach().cpu().clone())) for k, v in m.state_dict().items()],
                [(k, None if p.grad is None else ("tensor", p.grad.detach().cpu().clone()))
                 for k, p in m.named_parameters()], hooks)

    events, tracked = [], []

    def track(x, depth=0):
        if isinstance(x, (torch.Tensor, nn.Module)):
            if not any(t is x for t in tracked):
                tracked.append(x)
        elif isinstance(x, (list, tuple)) and depth < 2:
            for v in x:
                track(v, depth + 1)
        elif isinstance(x, dict) and depth < 2:
            for v in x.values():
                track(v, depth + 1)

    def wrap(label, obj):
        def recorded(*args, **kwargs):
            track(args)
            track(kwargs)
            with Guard():
                out = obj(*args, **kwargs)
            if isinstance(out, nn.Module):
                track(out)
            events.append(("call", label, plain(out)))
            return out
        return Answer(obj, recorded)

    class Answer:
        """A learner's function or class, recorded when called; any other attribute is the object's own."""

        def __init__(self, obj, call):
            object.__setattr__(self, "_obj", obj)
            object.__setattr__(self, "_call", call)

        def __call__(self, *args, **kwargs):
            return self._call(*args, **kwargs)

        def __getattr__(self, attr):
            return getattr(self._obj, attr)

    originals = (torch.manual_seed, torch.random.manual_seed, torch.Generator)

    class SaltedGenerator(torch.Generator):
        def manual_seed(self, seed):
            return super().manual_seed(mix(seed))

    def salted_manual_seed(seed):
        return originals[0](mix(seed))

    namespace = {"test_case": lambda **kw: (lambda f: f)}
    code = compile(source.replace("from otter.test_files import test_case", ""), f"<check {name}>", "exec")
    outcome = ("ok", "")
    try:
        exec(code, namespace)
        args = []
        for param in params:
            if param not in user_ns:
                raise NameError(f"name {param!r} is not defined")
            value = user_ns[param]
            if isinstance(value, (types.FunctionType, type)) or (callable(value) and not isinstance(value, nn.Module)):
                args.append(wrap(param, value))
            else:
                events.append(("value", param, plain(value)))
                track(value)
                args.append(value)
        torch.manual_seed, torch.random.manual_seed, torch.Generator = salted_manual_seed, salted_manual_seed, SaltedGenerator
        try:
            originals[0](mix(name))          # layers made without a seed get the same weights in both kernels
            namespace[name](*args)
        finally:
            torch.manual_seed, torch.random.manual_seed, torch.Generator = originals
    except AssertionError as err:
        outcome = ("assertion", str(err))
    except Exception as err:                  # noqa: BLE001 - any failure of the answer is a failed check
        outcome = ("error", f"{type(err).__name__}: {err}")
    post = []
    for obj in tracked:
        if isinstance(obj, nn.Module):
            post.append(module_state(obj))
        else:
            grad = obj.grad if obj.is_leaf else None     # a non-leaf tensor keeps no gradient
            post.append(None if grad is None else ("tensor", grad.detach().cpu().clone()))
    torch.save({"events": events, "post": post, "outcome": list(outcome), "forbidden": attempts}, out_path)

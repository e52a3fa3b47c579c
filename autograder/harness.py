"""Kernel side of grading: call the learner's code and write its outputs as plain data.

The grader copies the *source* of this module into a cell appended to the submission, so it runs
in the learner's kernel after all their cells, with nothing imported from ``autograder``. It may
use only the standard library, NumPy and (lazily) PyTorch.

It writes two files the trusted grader reads back:

* ``capture.npz``  - one array per output, key ``"<exercise>/<case>/<output>"`` (no pickles);
* ``capture.json`` - per exercise and case: ``ok`` / ``error`` / ``missing`` / ``not_implemented``,
  the type the learner returned and a short error message.

Nothing here decides a score: a learner's kernel can be tampered with, so everything it writes is
treated as untrusted data and checked again by :mod:`autograder.compare`.
"""
import json
import os
import traceback

import numpy as np

MAX_MESSAGE = 600  # characters of an exception message kept for feedback
MAX_ELEMENTS = 1 << 24  # numbers in one output; no exercise needs more (a huge tensor is refused)


def to_plain(value):
    """A returned value as ``(ndarray or None, type name, problem or None)``.

    Only exact ``torch.Tensor`` (or ``nn.Parameter``), ``numpy.ndarray``, ``bool``, ``int`` and
    ``float`` are accepted: a subclass can override comparisons, so it is refused, not converted.

    >>> to_plain(1.5)
    (array(1.5), 'float', None)
    """
    kind = type(value)
    name = f"{kind.__module__}.{kind.__qualname__}" if kind.__module__ != "builtins" else kind.__qualname__
    if kind in (bool, int, float):
        if kind is int and not -(1 << 63) <= value < (1 << 63):
            return None, name, "an int too large for 64 bits"
        return np.asarray(value), name, None
    if kind is np.ndarray:
        if value.dtype.kind not in "biuf":
            return None, name, f"an array of dtype {value.dtype}; expected numbers"
        if value.size > MAX_ELEMENTS:
            return None, name, f"an array of {value.size} numbers (shape {value.shape}); far too large"
        return np.array(value, copy=True), name, None
    try:
        import torch
    except ImportError:  # pragma: no cover - the course always has torch
        torch = None
    if torch is not None and kind in (torch.Tensor, torch.nn.Parameter):
        tensor = torch.Tensor.detach(value).cpu()
        if tensor.dtype in (torch.bfloat16, torch.float16):
            tensor = tensor.float()
        if tensor.is_complex():
            return None, name, f"a complex tensor ({value.dtype}); expected real numbers"
        if tensor.numel() > MAX_ELEMENTS:
            return None, name, f"a tensor of {tensor.numel()} numbers (shape {tuple(tensor.shape)}); far too large"
        return tensor.numpy().copy(), f"torch.Tensor[{str(value.dtype).replace('torch.', '')}]", None
    return None, name, f"a {name}; expected a tensor or a number"


def _message(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE] + " ..."


def _where(exc: BaseException) -> str:
    """The learner's line that raised, when it was in a notebook cell."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "ipykernel_" in f.filename]
    if not frames:
        return ""
    frame = frames[-1]
    return f" (in {frame.name}: `{(frame.line or '').strip()[:120]}`)"


def run_case(fn, call, inputs):
    """Call the learner's code on one case: ``(outputs, report)``; never raises."""
    try:
        returned = call(fn, inputs)
    except NotImplementedError as exc:
        return {}, {"status": "not_implemented", "message": _message(exc)}
    except Exception as exc:  # the learner's bug, reported, never fatal
        return {}, {"status": "error", "message": _message(exc) + _where(exc)}
    if type(returned) is not dict:
        return {}, {"status": "error", "message": f"the grader's call returned {type(returned).__name__}"}
    outputs, types, problems = {}, {}, []
    for key, value in returned.items():
        array, type_name, problem = to_plain(value)
        types[str(key)] = type_name
        if problem:
            problems.append(f"`{key}` is {problem}")
        else:
            outputs[str(key)] = array
    if problems:
        return {}, {"status": "error", "message": "; ".join(problems), "types": types}
    return outputs, {"status": "ok", "types": types}


def capture(spec, namespace, inputs, out_prefix, nonce=""):
    """Run every exercise of ``spec`` on its cases and write ``<out_prefix>.npz`` / ``.json``.

    ``spec`` is a list of ``{"id", "callable", "call_source", "call_name", "cases": {name: [keys]}}``;
    ``inputs`` an ``.npz`` (path or file object); ``nonce`` goes into the report so the grader can
    tell this capture from files a learner's cell left behind.
    """
    stored = np.load(inputs, allow_pickle=False)
    arrays, report = {}, {"__nonce__": nonce}
    for exercise in spec:
        scope = {}
        exec(exercise["call_source"], scope)
        call = scope[exercise["call_name"]]
        fn = namespace.get(exercise["callable"])
        entry = report[exercise["id"]] = {"cases": {}}
        if fn is None:
            entry["status"] = "missing"
            entry["message"] = f"`{exercise['callable']}` is not defined in the notebook"
            continue
        for case, keys in exercise["cases"].items():
            inputs = {key: stored[f"{exercise['id']}/{case}/{key}"] for key in keys}
            outputs, case_report = run_case(fn, call, inputs)
            entry["cases"][case] = case_report
            for key, array in outputs.items():
                arrays[f"{exercise['id']}/{case}/{key}"] = array
    os.makedirs(os.path.dirname(out_prefix) or ".", exist_ok=True)
    np.savez(out_prefix + ".npz", **arrays)
    with open(out_prefix + ".json", "w", encoding="utf-8") as handle:
        json.dump(report, handle)

"""The grader's cells and what comes back from them.

Grading appends two cells to a submission, each identified by an id made for this run (a learner
cannot tag a cell of their own as the grader's):

1. the **public** cell calls every exercise on its public cases and writes a capture file;
2. the **hidden** cell does the same on the hidden cases.

The executor copies each capture out of the sandbox as soon as its cell ends, so everything the
learner's code says on public cases (their error messages) is taken *before* any hidden input
exists in the kernel, and nothing the kernel writes later can change it. Of the hidden cases only
statuses and arrays come back, never text.

**Kernel half** (:data:`KERNEL_FUNCTIONS`): the source of these functions is copied into the cells;
they use only the standard library, NumPy and (lazily) PyTorch. A capture file is::

    MAGIC | header length (8 bytes, little-endian) | header (JSON) | raw array bytes

with the header ``{"nonce", "report": {exercise: {"status"?, "message"?, "cases": {case: {...}}}},
"arrays": {"<exercise>/<case>/<output>": [dtype, shape, offset]}}``. No pickles, no compression.

**Trusted half** (:func:`read_capture`): the file is untrusted bytes. Its size is bounded before
it is read; the header must carry this run's nonce; only keys of the expected exercises and cases,
plain numeric dtypes and shapes that fit the bytes are accepted; everything else is ignored.
"""
from __future__ import annotations

import base64
import inspect
import io
import json
import os
import textwrap
import traceback

import numpy as np

MAGIC = b"COURSE-CAPTURE-1\n"
MAX_MESSAGE = 600          # characters of a learner's exception message kept for feedback
MAX_ELEMENTS = 1 << 24     # numbers in one output; no exercise needs more (a huge tensor is refused)
MAX_HEADER = 4 * 1024 ** 2  # bytes of a capture's JSON header
MAX_OUTPUTS_PER_CASE = 128
DTYPES = ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16", "float32",
          "float64")


# =========================================================================== kernel half


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
        return {}, {"status": "error", "message": _message(exc) + _where(exc), "exception": type(exc).__name__}
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


def write_capture(path, nonce, report, arrays):
    """One capture file: MAGIC, the header's length, the header (JSON), then the arrays' bytes."""
    index, chunks, offset = {}, [], 0
    for key, array in arrays.items():
        data = np.array(array, copy=True, order="C")  # (ascontiguousarray would make a 0-d array 1-d)
        index[key] = [data.dtype.name, list(data.shape), offset]
        chunks.append(data.tobytes())
        offset += data.nbytes
    header = json.dumps({"nonce": nonce, "report": report, "arrays": index}).encode("utf-8")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(MAGIC + len(header).to_bytes(8, "little") + header)
        for chunk in chunks:
            handle.write(chunk)


def capture(spec, namespace, inputs, path, nonce, keep_messages):
    """Run every exercise of ``spec`` on its cases and write the capture to ``path``.

    ``spec`` is a list of ``{"id", "callable", "call_source", "call_name", "cases": {name: [keys]}}``;
    ``inputs`` an ``.npz`` file object of the grader's (trusted) inputs. Without ``keep_messages``
    (the hidden cases) only statuses go into the report, never text.
    """
    stored = np.load(inputs, allow_pickle=False)
    arrays, report = {}, {}
    for exercise in spec:
        scope = {}
        exec(exercise["call_source"], scope)
        call = scope[exercise["call_name"]]
        fn = namespace.get(exercise["callable"])
        entry = report[exercise["id"]] = {"cases": {}}
        if fn is None:
            entry["status"] = "missing"
            continue
        for case, keys in exercise["cases"].items():
            case_inputs = {key: stored[f"{exercise['id']}/{case}/{key}"] for key in keys}
            outputs, case_report = run_case(fn, call, case_inputs)
            if not keep_messages:
                case_report = {k: v for k, v in case_report.items() if k in ("status", "exception", "types")}
            entry["cases"][case] = case_report
            for key, array in outputs.items():
                arrays[f"{exercise['id']}/{case}/{key}"] = array
    write_capture(path, nonce, report, arrays)


KERNEL_FUNCTIONS = (to_plain, _message, _where, run_case, write_capture, capture)


# =========================================================================== the cells


def kernel_source() -> str:
    """The kernel half as one self-contained module (what the cells ``exec``)."""
    constants = f"MAGIC = {MAGIC!r}\nMAX_MESSAGE = {MAX_MESSAGE}\nMAX_ELEMENTS = {MAX_ELEMENTS}\n"
    functions = "\n\n".join(textwrap.dedent(inspect.getsource(f)) for f in KERNEL_FUNCTIONS)
    return "import json, os, traceback\nimport numpy as np\n" + constants + "\n" + functions


def phase_spec(exercises, hidden: bool) -> list[dict]:
    """What the kernel needs of each exercise for one phase: its callable, ``call`` and input keys."""
    spec = []
    for ex in exercises:
        cases = [case for case in ex.cases if case.hidden == hidden]
        if not cases:
            continue
        spec.append({
            "id": ex.id,
            "callable": ex.callable,
            "call_source": textwrap.dedent(inspect.getsource(ex.call)),
            "call_name": ex.call.__name__,
            "cases": {case.name: sorted(ex.inputs(case)) for case in cases},
        })
    return spec


def inputs_npz(exercises, hidden: bool) -> bytes:
    """The inputs of every case of one phase, as an ``.npz`` the kernel reads with ``allow_pickle=False``."""
    arrays = {}
    for ex in exercises:
        for case in ex.cases:
            if case.hidden == hidden:
                for key, value in ex.inputs(case).items():
                    arrays[f"{ex.id}/{case.name}/{key}"] = np.asarray(value)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def cell_source(exercises, hidden: bool, path: str, nonce: str) -> str:
    """The grader's cell for one phase: the kernel half, each exercise's ``call`` and the inputs, inline
    (the inputs never sit in a file the learner's code could read before this cell runs)."""
    inputs = base64.b64encode(inputs_npz(exercises, hidden)).decode()
    spec = json.dumps(phase_spec(exercises, hidden))
    which = "hidden" if hidden else "public"
    return (
        f"# Appended by the grader: calls your functions on the {which} grading cases.\n"
        "def __course_capture(_source, _spec, _inputs):\n"
        "    _scope = {}\n"
        "    exec(compile(_source, 'autograder_capture', 'exec'), _scope)\n"
        f"    _scope['capture'](_spec, globals(), _inputs, {path!r}, {nonce!r}, {not hidden!r})\n"
        f"__course_capture({kernel_source()!r}, __import__('json').loads({spec!r}), "
        f"__import__('io').BytesIO(__import__('base64').b64decode({inputs!r})))\n"
        "del __course_capture\n"
    )


# =========================================================================== trusted half


def read_capture(data: bytes | None, nonce: str, expected: dict[str, set[str]]) -> tuple[dict | None, dict]:
    """``(report, arrays)`` from an untrusted capture, or ``(None, {})`` when it is not one.

    ``expected`` maps each exercise id to the case names of this phase: only those go into the
    report, and only arrays under ``"<exercise>/<case>/"`` are read, at most
    :data:`MAX_OUTPUTS_PER_CASE` per case. Every declared dtype, shape and offset is checked
    against the bytes present before any array is built.
    """
    if not data or not data.startswith(MAGIC) or len(data) < len(MAGIC) + 8:
        return None, {}
    size = int.from_bytes(data[len(MAGIC):len(MAGIC) + 8], "little")
    start = len(MAGIC) + 8
    if size > MAX_HEADER or start + size > len(data):
        return None, {}
    try:
        header = json.loads(data[start:start + size].decode("utf-8"))
    except (ValueError, RecursionError):
        return None, {}
    if not isinstance(header, dict) or header.get("nonce") != nonce:
        return None, {}
    body = memoryview(data)[start + size:]
    raw_report = header.get("report") if isinstance(header.get("report"), dict) else {}
    report = {}
    for exercise, cases in expected.items():
        entry = raw_report.get(exercise)
        if not isinstance(entry, dict):
            continue
        clean = {"cases": {}}
        if entry.get("status") == "missing":
            clean["status"] = "missing"
        raw_cases = entry.get("cases") if isinstance(entry.get("cases"), dict) else {}
        for case in cases:
            item = raw_cases.get(case)
            if isinstance(item, dict):
                clean["cases"][case] = {k: str(v)[:2 * MAX_MESSAGE] for k, v in item.items()
                                        if k in ("status", "message", "exception") and isinstance(v, str)}
        report[exercise] = clean
    arrays = {}
    counts: dict[str, int] = {}
    index = header.get("arrays") if isinstance(header.get("arrays"), dict) else {}
    for key, meta in index.items():
        if not isinstance(key, str) or key.count("/") != 2:
            continue
        exercise, case, output = key.split("/")
        if case not in expected.get(exercise, ()) or not output:
            continue
        prefix = f"{exercise}/{case}"
        counts[prefix] = counts.get(prefix, 0) + 1
        if counts[prefix] > MAX_OUTPUTS_PER_CASE:
            continue
        array = _array(meta, body)
        if array is not None:
            arrays[key] = array
    return report, arrays


def _array(meta, body: memoryview) -> np.ndarray | None:
    """One declared array, or ``None`` when its declaration does not fit the bytes."""
    if not (isinstance(meta, list) and len(meta) == 3 and meta[0] in DTYPES and isinstance(meta[1], list)
            and type(meta[2]) is int):
        return None
    dtype, shape, offset = np.dtype(meta[0]), meta[1], meta[2]
    if len(shape) > 8 or not all(type(n) is int and 0 <= n <= MAX_ELEMENTS for n in shape):
        return None
    count = 1
    for n in shape:
        count *= n
    if count > MAX_ELEMENTS or offset < 0 or offset + count * dtype.itemsize > len(body):
        return None
    if count == 0:
        return np.zeros(shape, dtype=dtype)
    return np.frombuffer(body, dtype=dtype, count=count, offset=offset).reshape(shape).copy()

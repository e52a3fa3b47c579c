"""Execute one notebook with papermill, going on past failing cells.

Run by :mod:`autograder.runner` in a child process (so that a hung or hostile kernel can be killed
with its whole process group)::

    python -m autograder.execute IN.ipynb OUT.ipynb --cell-timeout 300 [-p FAST True ...] < payload.json

The payload on stdin, ``{"capture": SOURCE}``, is the grader's cell: it is appended in memory (it
holds the hidden inputs, which never sit in a file the learner's cells could read) and its source is
blanked in every copy of the notebook papermill writes. Outputs beyond ``--output-bytes`` are dropped,
with one note saying so.

Exit status: 0 when every cell ran (some may have raised: the learner's errors are recorded in
OUT.ipynb), 3 when the kernel died, 4 for anything else (message on stderr).
"""
from __future__ import annotations

import argparse
import ast
import json
import sys

KERNEL_DIED = 3
FAILED = 4
CAPTURE_TAG = "course-capture"
CAPTURE_TIMEOUT = 120  # seconds, at least, for the grader's cell


def _cap_outputs(limit: int) -> None:
    """Keep at most ``limit`` bytes of outputs in the notebook; note once that the rest was dropped."""
    from nbclient import NotebookClient
    from nbformat.v4 import new_output

    original = NotebookClient.output

    def output(self, outs, msg, display_id, cell_index):
        content = msg.get("content", {})
        size = len(content.get("text", "")) + sum(len(str(v)) for v in content.get("data", {}).values()) \
            + sum(len(str(v)) for v in content.get("traceback", []))
        used = getattr(self, "_course_output_bytes", 0)
        self._course_output_bytes = used + size
        if used + size <= limit:
            return original(self, outs, msg, display_id, cell_index)
        if not getattr(self, "_course_output_noted", False):
            self._course_output_noted = True
            outs.append(new_output("stream", name="stdout",
                                   text=f"\n[the grader dropped the outputs after the first {limit} bytes]\n"))
        if msg.get("msg_type") == "error":  # keep the error itself, without its traceback
            out = new_output("error", ename=str(content.get("ename", ""))[:200],
                             evalue=str(content.get("evalue", ""))[:300], traceback=[])
            outs.append(out)
            return out
        return None

    NotebookClient.output = output


def _redact_saved_notebooks() -> None:
    """papermill writes the notebook as it runs: blank the grader's cell in every copy it writes."""
    import copy

    import papermill.engines
    import papermill.execute

    write = papermill.engines.write_ipynb

    def redacted(nb, path):
        nb = copy.deepcopy(nb)
        for cell in nb.cells:
            if CAPTURE_TAG in cell.metadata.get("tags", []):
                cell.source = "# the grader's cell (not shown)"
        return write(nb, path)

    papermill.engines.write_ipynb = papermill.execute.write_ipynb = redacted


def _value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("--cell-timeout", type=int, default=300)
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    parser.add_argument("--cwd", default=None)
    parser.add_argument("--output-bytes", type=int, default=4 * 1024 * 1024)
    args = parser.parse_args(argv)

    import nbformat
    import papermill
    from nbclient.exceptions import DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    payload = {} if sys.stdin is None or sys.stdin.isatty() else json.loads(sys.stdin.read() or "{}")
    nb = nbformat.read(args.input, as_version=4)
    if payload.get("capture"):
        nb.cells.append(nbformat.v4.new_code_cell(payload["capture"], metadata={"tags": [CAPTURE_TAG]}))
    _cap_outputs(args.output_bytes)
    _redact_saved_notebooks()
    try:
        papermill.execute_notebook(
            nb,
            args.output,
            parameters={name: _value(value) for name, value in args.parameter},
            kernel_name="python3",
            progress_bar=False,
            cwd=args.cwd,
            execution_timeout=args.cell_timeout,
            # The grader's cell imports torch and calls every case: it gets at least CAPTURE_TIMEOUT
            # (the wall clock of the whole notebook still applies).
            timeout_func=lambda cell: max(args.cell_timeout, CAPTURE_TIMEOUT)
            if CAPTURE_TAG in cell.metadata.get("tags", []) else args.cell_timeout,
            # Keep going past a failing cell so later exercises still earn their credit, and turn
            # a cell that runs too long into an interrupt (KeyboardInterrupt in that cell).
            allow_errors=True,
            interrupt_on_timeout=True,
        )
    except PapermillExecutionError:
        return 0  # some cells raised; the output notebook holds their tracebacks
    except DeadKernelError as exc:
        print(f"the kernel died: {exc}", file=sys.stderr)
        return KERNEL_DIED
    except Exception as exc:  # noqa: BLE001 - any failure becomes a message, never a crash
        text = str(exc)
        if "Kernel died" in text or "kernel died" in text:
            print(f"the kernel died: {text[:500]}", file=sys.stderr)
            return KERNEL_DIED
        print(f"{type(exc).__name__}: {text[:2000]}", file=sys.stderr)
        return FAILED
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

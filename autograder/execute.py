"""Execute one notebook with papermill, going on past failing cells.

Run by :mod:`autograder.runner` in a child process (so that a hung or hostile kernel can be killed
with its whole process group)::

    python -m autograder.execute IN.ipynb OUT.ipynb --cell-timeout 300 --capture-timeout 600 [-p FAST True ...]

Exit status: 0 when every cell ran (some may have raised: the learner's errors are recorded in
OUT.ipynb), 3 when the kernel died, 4 for anything else (message on stderr).
"""
from __future__ import annotations

import argparse
import ast
import sys

KERNEL_DIED = 3
FAILED = 4
CAPTURE_TAG = "autograder-capture"


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
    parser.add_argument("--capture-timeout", type=int, default=600,
                        help="seconds for the grader's own cell (tagged autograder-capture)")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    parser.add_argument("--cwd", default=None)
    args = parser.parse_args(argv)

    import papermill
    from nbclient.exceptions import DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    try:
        papermill.execute_notebook(
            args.input,
            args.output,
            parameters={name: _value(value) for name, value in args.parameter},
            kernel_name="python3",
            progress_bar=False,
            cwd=args.cwd,
            execution_timeout=args.cell_timeout,
            # The grader's appended cell calls every exercise on every case: it gets its own budget.
            timeout_func=lambda cell: args.capture_timeout if CAPTURE_TAG in cell.metadata.get("tags", []) else args.cell_timeout,
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

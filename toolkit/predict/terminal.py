"""What `toolkit predict` shows on the terminal.

A few images (up to TABLE_MAX): one table row each on stdout. More: a tqdm progress
bar on stderr (only when stderr is a terminal). Always: skipped files with their
reasons and a summary on stderr, so stdout carries only results. Every line passes through
``toolkit.text.printable``: a file name's control characters never reach the terminal raw.
"""

from __future__ import annotations

import sys

import click
import numpy as np

from ..text import printable
from .inputs import expected_label
from .results import Reporter, Summary

TABLE_MAX = 20


class TerminalReporter(Reporter):
    def __init__(self, *, table_max: int = TABLE_MAX):
        self.table_max = table_max
        self.table = False
        self.bar = None
        self.top_k = 1
        self.classes: list[str] = []
        self.path_width = 4
        self.labelled_any = False
        self.summary: Summary | None = None

    # -- messages that must not tear the progress bar
    def _err(self, text: str) -> None:
        text = printable(text)
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            click.echo(text, err=True)

    def notice(self, text: str) -> None:
        self._err(f"toolkit: {text}")

    def begin(self, files, classes, top_k) -> None:
        self.classes, self.top_k = classes, top_k
        if len(files) <= self.table_max:
            self.table = True
            self.path_width = min(60, max(4, *(len(printable(p)) for p in files)))
            self.labelled_any = any(expected_label(p, classes) is not None for p in files)
            head = f"{'path':<{self.path_width}}  label  confidence"
            if self.labelled_any:
                head += "  expected"
            click.echo(head + f"  top-{top_k}")
        elif _is_terminal(sys.stderr):
            # Only on a real terminal, never in logs or pipes (where importing tqdm is pure cost).
            from tqdm import tqdm

            self.bar = tqdm(total=len(files), unit="img", file=sys.stderr, dynamic_ncols=True, leave=False)

    def skipped(self, path, reason) -> None:
        self._err(f"skipped {path}: {reason}")

    def predicted(self, paths, expected, probs, top, blank) -> None:
        if not self.table:
            return
        for i, path in enumerate(paths):
            best = top[i, 0]
            path = printable(path)
            shown = path if len(path) <= self.path_width else "..." + path[-(self.path_width - 3):]
            if blank[i]:  # no ink: no label, no confidence, no top-k
                line = f"{shown:<{self.path_width}}  {'blank':>5}  {'':>10}"
                if self.labelled_any:
                    line += f"  {'' if expected[i] is None else expected[i] + ' -':<8}"
                click.echo(printable(line.rstrip()))
                continue
            line = f"{shown:<{self.path_width}}  {self.classes[best]:>5}  {probs[i, best]:>10.4f}"
            if self.labelled_any:
                mark = "" if expected[i] is None else (expected[i] + (" ok" if expected[i] == self.classes[best] else " WRONG"))
                line += f"  {mark:<8}"
            line += "  " + " ".join(f"{self.classes[j]}:{probs[i, j]:.3f}" for j in top[i])
            click.echo(printable(line))  # class names come from the model file: outside text too

    def advance(self, files_done) -> None:
        if self.bar is not None:
            self.bar.update(files_done)

    def end(self, summary: Summary) -> None:
        self.summary = summary  # first: an interrupted run's last line is made from it (cli/predict.py)
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        for line in summary_lines(summary):
            click.echo(printable(line), err=True)


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def summary_lines(s: Summary) -> list[str]:
    rate = f"{s.images_per_second:,.0f} images/s" if s.seconds > 0 else "-"
    lines = [f"{s.images} image(s) predicted, {s.skipped} skipped, {s.seconds:.2f} s ({rate}), provider {s.provider}"
             + (" (interrupted)" if s.interrupted else "")]
    if s.blank:
        lines.append(f"{s.blank} blank image(s): no ink found, so no label (column blank in --output; "
                     "not counted in the accuracy)")
    if s.ignored:
        lines.append(f"{s.ignored} non-image file(s) in the folders ignored (names without an image suffix)")
    if s.accuracy is not None:
        lines.append(f"accuracy {s.accuracy * 100:.2f}% ({s.correct}/{s.labelled} images labelled by their folder name)")
        if s.confusion_png is None and not s.interrupted:
            lines.append("confusion matrix: " + _compact_confusion(s.confusion, s.classes)
                         + " (write it as a PNG with --confusion FILE.png or --output)")
    if s.confusion_png is not None:
        lines.append(f"wrote {s.confusion_png}")
    if s.output is not None:
        lines.append(f"wrote {s.output} ({s.rows_written} rows)" + (", complete up to the interruption" if s.interrupted else ""))
    elif s.images > TABLE_MAX and not s.interrupted:
        lines.append("per-image results: pass --output results.csv (or .jsonl)")
    return lines


def _compact_confusion(cm: np.ndarray, classes: list[str]) -> str:
    """Only the mistakes, most frequent first, e.g. '4->9 x3, 7->1 x1'."""
    errors = [(int(cm[i, j]), classes[i], classes[j]) for i in range(len(classes)) for j in range(len(classes))
              if i != j and cm[i, j]]
    if not errors:
        return "no mistakes"
    errors.sort(key=lambda e: (-e[0], e[1], e[2]))
    shown = ", ".join(f"{t}->{p} x{n}" for n, t, p in errors[:8])
    return "mistakes (true->predicted) " + shown + (f", +{len(errors) - 8} more" if len(errors) > 8 else "")

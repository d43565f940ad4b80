"""`toolkit` command line. Commands only parse arguments and call library functions;
library errors (toolkit.errors) become one line on stderr and a documented exit code.

Nothing heavy is imported here: `toolkit --help` and `toolkit predict` never load torch.
"""

from __future__ import annotations

import errno
import importlib
import os
import signal
import sys
import threading

import click

from .. import __version__
from ..errors import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_UNAVAILABLE, ToolkitError
from ..text import printable
from .options import exit_codes_help

# Packages of the `train` extra: an edge install (plain `pip install`) lacks them on purpose.
# ctx.meta key: a command whose interruption keeps something says what, instead of the generic line below.
INTERRUPTED_MESSAGE = "toolkit.interrupted_message"
TRAIN_EXTRA_MODULES = {"torch", "torchvision", "onnx", "onnxscript", "matplotlib"}
STDOUT_ERRORS = {errno.ENOSPC, errno.EIO, errno.EDQUOT, errno.EFBIG}


def _stdout_fails(error: OSError) -> bool:
    """Whether the error came from printing (click.echo: inspect --json, a table), not from a file."""
    tb = error.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code.co_name == "echo" and frame.f_globals.get("__name__", "").startswith("click"):
            return True
        tb = tb.tb_next
    return False


def _silence_stdout() -> None:
    """What is left in stdout's buffer is dropped (the interpreter's flush at exit would fail again)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


class ToolkitGroup(click.Group):
    def invoke(self, ctx: click.Context):
        from ..run_guard import exit_when_stuck

        exit_when_stuck()  # a model run that ignores being stopped ends the process (toolkit.run_guard)
        saved = None
        if (ctx.invoked_subcommand != "serve" and threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL):
            # SIGTERM as Ctrl-C: the command ends in one line (exit 130) and its partial files are removed;
            # predict installs its own handler, serve its server's.
            saved = signal.signal(signal.SIGTERM, _terminate)
        try:
            return self._invoke(ctx)
        finally:
            if saved is not None and signal.getsignal(signal.SIGTERM) is _terminate:  # else: ignored while ending
                signal.signal(signal.SIGTERM, saved)

    def _invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ToolkitError as e:
            click.echo(f"toolkit: error: {printable(e)}", err=True)  # names files: never raw control characters
            ctx.exit(e.exit_code)
        except ModuleNotFoundError as e:
            if (e.name or "").split(".")[0] not in TRAIN_EXTRA_MODULES:
                raise
            command = ctx.invoked_subcommand or "this command"
            click.echo(f"toolkit: error: `toolkit {command}` needs {e.name}, which is not installed here; "
                       "install the training extra: pip install 'toolkit[train]'", err=True)
            ctx.exit(EXIT_UNAVAILABLE)
        except OSError as e:
            # The command's own output (inspect --json, a table) on a full device: said once, by errno and by
            # where it was raised, never as a traceback. (A pipe whose reader went is click's: exit 1, silent.)
            if e.errno not in STDOUT_ERRORS or not _stdout_fails(e):
                raise
            _silence_stdout()
            click.echo(f"toolkit: error: standard output could not be written ({e.strerror})", err=True)
            ctx.exit(EXIT_ERROR)
        except KeyboardInterrupt:
            # First, before any Python code can run a handler: the command is ending, and one more Ctrl-C in
            # the interpreter's shutdown would print a traceback. (predict handles its own interrupts.)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
            said = ctx.meta.get(INTERRUPTED_MESSAGE, lambda: "interrupted (no partially written file is left behind)")
            click.echo(f"toolkit: {printable(said())}", err=True)
            ctx.exit(EXIT_INTERRUPTED)


def _terminate(signum, frame):
    # Once: a second SIGTERM landing in the cleanup (a weakref callback, a finally) would print "Exception ignored".
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


# Each command lives in the module of its name (toolkit.cli.<name>.command), imported only when that command
# runs or help lists them all: `toolkit predict` does not pay for the options and imports of the six others.
COMMANDS = ("train", "export", "inspect", "predict", "bench", "draw", "serve")


class LazyCommands(ToolkitGroup):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        return importlib.import_module(f"{__name__}.{name}").command


@click.group(cls=LazyCommands, epilog=exit_codes_help(), context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="toolkit")
def cli() -> None:
    """Train the MNIST MLP, export it to TorchScript/ONNX with a parity gate,
    and run it anywhere ONNX Runtime runs.

    \b
    Typical flow:
      toolkit train                  # -> model.pth (+ metrics, figures)
      toolkit export model.pth       # -> model.pt, model.onnx, parity report
      toolkit predict ./samples      # ONNX Runtime only, no torch
      toolkit bench --provider cpu   # latency / throughput
    """


# The console-script entry point is the click group itself.
main = cli


if __name__ == "__main__":
    sys.exit(main())

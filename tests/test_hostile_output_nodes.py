"""Output names that are not plain files, and outputs that must never replace inputs (issue 19, items 10-11).

Per writer family (toolkit.atomic's writers, predict's rows, bench --json; train, export and the stamp write
through the same atomic_path): a symbolic link to a file is followed (--force replaces its target, the link
stays), a dangling one is refused, a character device or FIFO is written through (appended, never replaced), a
name through this process's descriptors (/dev/stdout, a link to /proc/self/fd/1) writes on that descriptor, a
FIFO nobody reads is refused, a block device is refused. Real files, real FIFOs, real devices, real processes.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from test_runtime_contracts import linear_onnx
from toolkit.atomic import check_writable, write_text
from toolkit.errors import OutputError
from toolkit.predict.ray.parquet import MANIFEST, check_parquet_output, not_an_earlier_output, refuse_inputs_inside

BENCH_FAST = ["--provider", "cpu", "--batch-sizes", "1", "--warmup", "1", "--runs", "2", "--no-progress", "--no-peak",
              "--engines", "onnx"]


def toolkit(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "toolkit", *map(os.fspath, args)], capture_output=True, text=True,
                          timeout=240, **kw)


def one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("toolkit: error:")]
    assert len(errors) == 1, stderr
    return errors[0]


def read_fifo(path: Path) -> tuple[threading.Thread, list[bytes]]:
    """A real reader on the FIFO: open before this returns (as a `cat fifo` already running), reading until
    the writer closed it after writing."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    got: list[bytes] = []

    def read():
        data, deadline = b"", time.monotonic() + 60
        try:
            while time.monotonic() < deadline:
                try:
                    chunk = os.read(fd, 1 << 16)
                except BlockingIOError:
                    chunk = None
                if chunk:
                    data += chunk
                elif chunk == b"" and data:
                    break  # the writer is done
                else:
                    time.sleep(0.01)
        finally:
            os.close(fd)
            got.append(data)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread, got


def block_device() -> str | None:
    for name in sorted(os.listdir("/dev")):
        path = f"/dev/{name}"
        try:
            if stat.S_ISBLK(os.stat(path).st_mode):
                return path
        except OSError:
            continue
    return None


# ---------------------------------------------------------------- toolkit.atomic: every writer's last step

def test_links_devices_and_fifos_in_the_atomic_writers(tmp_path):
    real = tmp_path / "real.json"
    real.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(real)
    with pytest.raises(OutputError, match="already exists .a symbolic link to .*real.json.; pass --force"):
        check_writable(link, force=False)
    check_writable(link, force=True)
    write_text(link, "new", replace=True)
    assert link.is_symlink() and real.read_text() == "new"  # the target replaced, the link kept

    dangling = tmp_path / "dangling.json"
    dangling.symlink_to(tmp_path / "nowhere.json")
    for force in (False, True):
        with pytest.raises(OutputError, match="symbolic link to .*nowhere.json, which does not exist"):
            check_writable(dangling, force=force)
    with pytest.raises(OutputError, match="left untouched"):
        write_text(dangling, "ours", replace=True)  # a link met at the last step is never swapped either
    assert dangling.is_symlink() and not (tmp_path / "nowhere.json").exists()
    assert (tmp_path / "dangling.1.json").read_text() == "ours"

    for device in ("/dev/null", "/dev/full"):  # written through, --force or not; the node stays a device
        assert check_writable(device, force=False) == Path(device)
    write_text("/dev/null", "discarded")
    with pytest.raises(OutputError, match="/dev/full: could not be written: No space left on device"):
        write_text("/dev/full", "x" * 10, replace=True)
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode) and stat.S_ISCHR(os.stat("/dev/full").st_mode)

    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    with pytest.raises(OutputError, match="is a FIFO that no process reads; the results are in") as info:
        write_text(fifo, "nobody reads")  # refused at once instead of waiting forever
    kept = Path(str(info.value).rsplit(" ", 1)[1])
    assert kept.read_text() == "nobody reads"
    kept.unlink()
    thread, got = read_fifo(fifo)
    write_text(fifo, "to the reader\n")
    thread.join(10)
    assert got == [b"to the reader\n"] and stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]

    device = block_device()
    if device is not None:
        with pytest.raises(OutputError, match="is a block device"):
            check_writable(device, force=True)


def test_descriptor_names_write_on_the_descriptor(tmp_path):
    """/dev/stdout and a link to /proc/self/fd/1, stdout redirected to a file (`>> log`): the JSON lands after
    what the program printed, the log is neither truncated nor replaced, the link stays a link."""
    log = tmp_path / "log.txt"
    log.write_text("earlier lines\n")
    (tmp_path / "out.json").symlink_to("/proc/self/fd/1")
    code = ("import sys; from toolkit.atomic import check_writable, write_text\n"
            "print('printed first')\n"
            "for name in ('out.json', '/dev/stdout'):\n"
            "    check_writable(name, force=False)\n"
            "    write_text(name, name + ' written\\n', replace=True)\n"
            "print('printed last')\n")
    with open(log, "ab") as f:
        subprocess.run([sys.executable, "-c", code], cwd=tmp_path, stdout=f, check=True, timeout=60)
    assert log.read_text() == "earlier lines\nprinted first\nout.json written\n/dev/stdout written\nprinted last\n"
    assert (tmp_path / "out.json").is_symlink()


# ---------------------------------------------------------------- predict's rows and bench --json (real CLI)

@pytest.fixture
def digits(tmp_path, mnist):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(12):
        Image.fromarray(mnist.test_images[i]).save(folder / f"{i:02d}.png")
    linear_onnx(tmp_path / "m.onnx")
    return folder, tmp_path / "m.onnx"


def test_predict_output_through_links_devices_and_fifos(digits, tmp_path):
    folder, model = digits
    run = ["predict", folder, "--model", model, "--provider", "cpu", "--workers", "0"]
    fifo = tmp_path / "rows.csv"
    os.mkfifo(fifo)
    thread, got = read_fifo(fifo)
    done = toolkit(*run, "-o", fifo)
    thread.join(10)
    assert done.returncode == 0, done.stderr
    assert len(got[0].decode().splitlines()) == 13 and stat.S_ISFIFO(os.lstat(fifo).st_mode)

    stdout_link = tmp_path / "stdout.jsonl"
    stdout_link.symlink_to("/proc/self/fd/1")
    done = toolkit(*run, "-o", stdout_link, "--force")
    assert done.returncode == 0, done.stderr
    assert sum(line.startswith('{"path"') for line in done.stdout.splitlines()) == 12 and stdout_link.is_symlink()

    full = tmp_path / "full.csv"
    full.symlink_to("/dev/full")
    done = toolkit(*run, "-o", full)
    assert done.returncode == 1 and "No space left on device" in one_error_line(done.stderr)
    assert full.is_symlink()

    old = tmp_path / "old.csv"
    old.write_text("older rows\n")
    via = tmp_path / "via.csv"
    via.symlink_to(old)
    done = toolkit(*run, "-o", via)
    assert done.returncode == 1 and "symbolic link to" in one_error_line(done.stderr)
    assert old.read_text() == "older rows\n"
    done = toolkit(*run, "-o", via, "--force")
    assert done.returncode == 0, done.stderr
    assert via.is_symlink() and len(old.read_text().splitlines()) == 13

    dangling = tmp_path / "gone.csv"
    dangling.symlink_to(tmp_path / "nothing.csv")
    done = toolkit(*run, "-o", dangling, "--force")
    assert done.returncode == 1 and "which does not exist" in one_error_line(done.stderr)
    assert dangling.is_symlink() and not (tmp_path / "nothing.csv").exists()


def test_an_output_link_into_the_inputs_is_refused(digits, tmp_path):
    """Following a link must never turn an output into an overwrite of an input image."""
    folder, model = digits
    sneaky = tmp_path / "sneaky.csv"
    sneaky.symlink_to(folder / "03.png")
    before = (folder / "03.png").read_bytes()
    for option in ("-o", "--confusion"):
        name = sneaky if option == "-o" else tmp_path / "sneaky.png"
        if option == "--confusion":
            name.symlink_to(folder / "03.png")
        done = toolkit("predict", folder, "--model", model, option, name, "--force")
        assert done.returncode == 2 and "is also an input" in done.stderr, done.stderr
    assert (folder / "03.png").read_bytes() == before


def test_bench_json_through_links_and_devices(digits, tmp_path):
    _, model = digits
    done = toolkit("bench", "--model", model, *BENCH_FAST, "--json", "/dev/stdout")
    assert done.returncode == 0, done.stderr
    assert re.search(r'"schema_version": "\d+"\n}\nwrote /dev/stdout', done.stdout)  # the report, in its place
    old = tmp_path / "old.json"
    old.write_text("{}")
    link = tmp_path / "report.json"
    link.symlink_to(old)
    done = toolkit("bench", "--model", model, *BENCH_FAST, "--json", link, "--force")
    assert done.returncode == 0, done.stderr
    assert link.is_symlink() and json.loads(old.read_text()) != {}
    done = toolkit("bench", "--model", model, *BENCH_FAST, "--json", "/dev/full")
    assert done.returncode == 1 and "No space left on device" in one_error_line(done.stderr)


# ---------------------------------------------------------------- item 10: --force never removes what is not ours

def earlier_output(path: Path) -> Path:
    """A directory as a predict run leaves it: Ray's part files and the manifest naming them."""
    path.mkdir()
    (path / "a_000000_000000.parquet").write_bytes(b"PAR1")
    (path / MANIFEST).write_text(json.dumps({"written_by": "toolkit predict", "files": ["a_000000_000000.parquet"]}))
    return path


def test_parquet_force_replaces_only_an_earlier_output(tmp_path, mnist):
    ours = earlier_output(tmp_path / "ours.parquet")
    assert not_an_earlier_output(ours) is None
    assert check_parquet_output(ours, force=True) == ours
    with pytest.raises(OutputError, match="already exists; pass --force"):
        check_parquet_output(ours, force=False)

    photos = tmp_path / "photos.parquet"  # the user's folder, named like an output
    (photos / "sub").mkdir(parents=True)
    Image.fromarray(mnist.test_images[0]).save(photos / "sub" / "a.png")
    grown = earlier_output(tmp_path / "grown.parquet")
    (grown / "notes.txt").write_text("mine")  # added to an earlier output by the user
    odd = earlier_output(tmp_path / "odd.parquet")
    (odd / "a_000000_000000.parquet").unlink()
    (odd / "a_000000_000000.parquet").mkdir()
    (tmp_path / "file.parquet").write_text("a file")
    (tmp_path / "link.parquet").symlink_to(ours)
    cases = {photos: "without the _toolkit_predict.json", grown: "no predict run wrote (e.g. notes.txt)",
             odd: "not a part file", tmp_path / "file.parquet": "not a directory",
             tmp_path / "link.parquet": "is a symbolic link"}
    for path, reason in cases.items():
        for force in (False, True):
            with pytest.raises(OutputError, match="nothing is removed") as info:
                check_parquet_output(path, force=force)
            assert reason in str(info.value), info.value
    assert (photos / "sub" / "a.png").is_file() and (grown / "notes.txt").is_file()

    # inputs under the output (a given folder, or the folder of a file found) are never replaced
    inside = earlier_output(tmp_path / "in.parquet")
    (inside / "x").mkdir()
    with pytest.raises(OutputError, match="holds this run's inputs"):
        refuse_inputs_inside(inside, [inside / "x"], [])
    with pytest.raises(OutputError, match="holds this run's inputs"):
        refuse_inputs_inside(inside, [tmp_path], [str(inside / "x" / "a.png")])
    refuse_inputs_inside(inside, [tmp_path / "elsewhere"], ["s3://bucket/in.parquet/a.png"])


def test_parquet_force_over_the_users_images_through_the_cli(tmp_path, mnist):
    """The issue's case: `predict DIR.parquet/sub --engine ray -o DIR.parquet --force`: one line, nothing
    removed, and no Ray instance is started for it (the check comes before any work)."""
    # Found, not imported: Ray in the pytest process would cache a token that tests/test_ray.py's cluster lacks.
    if importlib.util.find_spec("ray") is None:
        pytest.skip("the cluster extra is not installed")
    out = tmp_path / "DIR.parquet"
    (out / "sub").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(mnist.test_images[i]).save(out / "sub" / f"{i}.png")
    linear_onnx(tmp_path / "m.onnx")
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    done = toolkit("predict", out / "sub", "--model", tmp_path / "m.onnx", "--engine", "ray", "-o", out, "--force")
    assert done.returncode == 1 and "nothing is removed" in one_error_line(done.stderr)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    # an earlier output that the inputs were then put into: refused for holding them
    earlier_output(tmp_path / "again.parquet")
    Image.fromarray(mnist.test_images[0]).save(tmp_path / "again.parquet" / "_x.png")
    done = toolkit("predict", tmp_path / "again.parquet" / "_x.png", "--model", tmp_path / "m.onnx", "--engine",
                   "ray", "-o", tmp_path / "again.parquet", "--force")
    assert done.returncode == 1 and (tmp_path / "again.parquet" / "_x.png").is_file()
    assert "no predict run wrote" in one_error_line(done.stderr)


# ---------------------------------------------------------------- item 12: nothing lands in the cleanup

def test_once_a_run_stops_at_once_further_signals_are_ignored():
    """Real signals to this process: the signal that stops a run at once (Parquet, or the second Ctrl-C) leaves
    the stop signals ignored, so none can land in the cleanup that follows (Ray's executor unwinding)."""
    import signal

    from toolkit.predict.signals import StopGuard

    with StopGuard() as stop:
        stop.armed = stop.at_once = True
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
        for s in (signal.SIGINT, signal.SIGTERM):
            assert signal.getsignal(s) is signal.SIG_IGN
            os.kill(os.getpid(), s)  # ignored by the kernel: no handler runs, nothing is raised
        time.sleep(0.1)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored when the run ends


def test_inspect_json_on_a_full_stdout_is_one_line(digits):
    """inspect --json prints (no file of its own): stdout on /dev/full is one line, exit 1; a reader that goes
    away early ends it quietly (click's EPIPE rule), never with a traceback or "Exception ignored"."""
    _, model = digits
    with open("/dev/full", "wb") as full:
        done = subprocess.run([sys.executable, "-m", "toolkit", "inspect", str(model), "--json"], stdout=full,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    assert done.returncode == 1
    line = one_error_line(done.stderr)
    assert line == "toolkit: error: standard output could not be written (No space left on device)"
    proc = subprocess.Popen([sys.executable, "-m", "toolkit", "inspect", str(model), "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # the reader is gone before anything is printed
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 1 and "Traceback" not in err and "Exception ignored" not in err


def test_the_stamp_out_through_a_link_and_onto_a_device(tmp_path, mnist):
    """export's files and the stamp's --out go through the same atomic_path: the class, on the stamp."""
    from click.testing import CliRunner

    from test_foreign_models import DIGITS, tiny_graph
    from toolkit.cli import cli

    theirs = tmp_path / "theirs.onnx"
    tiny_graph(theirs)
    options = ["--labels", ",".join(DIGITS), "--mean", "0.5", "--std", "0.5"]
    old = tmp_path / "old.onnx"
    old.write_bytes(b"an older stamp")
    link = tmp_path / "stamped.onnx"
    link.symlink_to(old)

    def export(*args):
        return CliRunner().invoke(cli, ["export", str(theirs), *options, *map(str, args)])

    refused = export("--out", link)
    assert refused.exit_code == 1 and "a symbolic link to" in refused.stderr, refused.stderr
    assert old.read_bytes() == b"an older stamp"
    done = export("--out", link, "--force")
    assert done.exit_code == 0, done.stderr
    assert link.is_symlink() and old.read_bytes()[:2] != b"an"  # the target holds the stamped model now
    assert CliRunner().invoke(cli, ["inspect", str(link)]).exit_code == 0
    done = export("--out", "/dev/null")
    assert done.exit_code == 0, done.stderr
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    dangling = tmp_path / "gone.onnx"
    dangling.symlink_to(tmp_path / "nowhere.onnx")
    refused = export("--out", dangling, "--force")
    assert refused.exit_code == 1 and "which does not exist" in refused.stderr
    assert dangling.is_symlink() and not (tmp_path / "nowhere.onnx").exists()

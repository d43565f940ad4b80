"""Output files and terminal text under hostile conditions (issue 10, items 10-15): full disks, files that
appear during a run, one path for two outputs, file names with control characters or formula prefixes.

Real components only: a real tmpfs filled to the last byte, RLIMIT_FSIZE in a real subprocess, real races
between real processes, real files with hostile names."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from toolkit.atomic import atomic_file, atomic_path, same_path, write_text
from toolkit.cli import cli
from toolkit.errors import OutputError
from toolkit.text import printable

BENCH_FAST = ["--provider", "cpu", "--batch-sizes", "1,4", "--warmup", "1", "--runs", "3", "--no-progress",
              "--no-peak"]


def invoke(*args):
    return CliRunner().invoke(cli, [os.fspath(a) for a in args])


def toolkit(*args, cwd=None, preexec_fn=None, **kw):
    """The real command in a real process: stdout/stderr as bytes, exactly what a terminal would get."""
    return subprocess.run([sys.executable, "-m", "toolkit", *map(os.fspath, args)], capture_output=True,
                          cwd=cwd, preexec_fn=preexec_fn, timeout=240, **kw)


def digit_images(folder: Path, mnist, count: int, start: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + count):
        path = folder / f"{i:05d}.png"
        Image.fromarray(mnist.test_images[i]).save(path)
        paths.append(path)
    return paths


def labelled_images(root: Path, mnist, count: int) -> None:
    for i in range(count):
        folder = root / str(int(mnist.test_labels[i]))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mnist.test_images[i]).save(folder / f"{i:05d}.png")


def one_error_line(stderr: str) -> str:
    """The run failed with exactly one line, without a traceback; returns it."""
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("toolkit: error:")]
    assert len(errors) == 1, stderr
    return errors[0]


def no_part_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.endswith(".part")]


# ---------------------------------------------------------------- item 10: a full disk

@pytest.fixture
def full_disk(tmp_path):
    """A 64 KiB tmpfs holding old.csv/old.json/old.png/old.pth (the files a run must keep), filled to the last
    byte: the honest full disk. Needs mount rights (root here and in CI); skipped with the reason otherwise."""
    mount = tmp_path / "full"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        for name in ("old.csv", "old.json", "old.png", "old.pth", "old.jsonl"):
            (mount / name).write_bytes(b"the old file " + name.encode())
        with contextlib.suppress(OSError), open(mount / "filler", "wb") as f:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
        with pytest.raises(OSError):  # really full
            (mount / "probe").write_bytes(b"x" * 8192)
        (mount / "probe").unlink(missing_ok=True)
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def assert_old_kept(folder: Path, name: str) -> None:
    assert (folder / name).read_bytes() == b"the old file " + name.encode()
    assert no_part_files(folder)


def test_atomic_write_on_a_full_disk_is_one_output_error(full_disk):
    target = full_disk / "old.json"
    with pytest.raises(OutputError) as info:
        write_text(target, "x" * 100_000, replace=True)
    assert info.value.path == str(target)
    assert "No space left on device" in str(info.value) and "the existing file is kept" in str(info.value)
    assert_old_kept(full_disk, "old.json")
    with pytest.raises(OutputError, match="nothing was written"):
        with atomic_file(full_disk / "new.bin") as f:
            for _ in range(100):
                f.write(b"y" * 4096)
    assert not (full_disk / "new.bin").exists() and no_part_files(full_disk)


@pytest.mark.parametrize("name", ["old.csv", "old.jsonl"])
def test_predict_output_on_a_full_disk(full_disk, tiny_onnx, mnist, tmp_path, name):
    digit_images(tmp_path / "in", mnist, 40)
    done = toolkit("predict", tmp_path / "in", "--model", tiny_onnx, "--provider", "cpu", "--workers", "0",
                   "-o", full_disk / name, "--force")
    line = one_error_line(done.stderr.decode())
    assert done.returncode == 1
    assert str(full_disk / name) in line and "No space left on device" in line
    assert_old_kept(full_disk, name)


def test_predict_confusion_on_a_full_disk(full_disk, tiny_onnx, mnist, tmp_path):
    labelled_images(tmp_path / "in", mnist, 30)
    done = toolkit("predict", tmp_path / "in", "--model", tiny_onnx, "--provider", "cpu", "--workers", "0",
                   "--confusion", full_disk / "old.png", "--force")
    line = one_error_line(done.stderr.decode())
    assert done.returncode == 1 and str(full_disk / "old.png") in line
    assert_old_kept(full_disk, "old.png")


@pytest.mark.parametrize("option,name", [("--json", "old.json"), ("--plot", "old.png")])
def test_bench_outputs_on_a_full_disk(full_disk, tiny_onnx, option, name):
    done = toolkit("bench", "--model", tiny_onnx, *BENCH_FAST, "--engines", "onnx", option, full_disk / name,
                   "--force")
    line = one_error_line(done.stderr.decode())
    assert done.returncode == 1 and str(full_disk / name) in line and "No space left" in line
    assert_old_kept(full_disk, name)


@pytest.mark.slow
def test_train_out_on_a_full_disk(full_disk, mnist):
    done = toolkit("train", "--epochs", "1", "--train-subset", "200", "--device", "cpu", "--no-progress",
                   "--out", full_disk / "old.pth", "--force")
    line = one_error_line(done.stderr.decode())
    assert done.returncode == 1 and str(full_disk / "old.pth") in line and "No space left" in line
    assert_old_kept(full_disk, "old.pth")


def test_export_on_a_full_disk(full_disk, tiny_ckpt, mnist):
    done = toolkit("export", tiny_ckpt, "--out-dir", full_disk, "--formats", "onnx")
    line = one_error_line(done.stderr.decode())
    assert done.returncode == 1 and str(full_disk) in line and "No space left" in line
    assert no_part_files(full_disk) and not list(full_disk.glob("model*"))


def _file_size_limit(limit: int):
    def apply():  # in the child: writes past `limit` bytes fail with EFBIG instead of killing it
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_file_size_limit_is_reported_like_a_full_disk(tiny_onnx, mnist, tmp_path):
    """RLIMIT_FSIZE: a second honest way to make the kernel refuse bytes (EFBIG), for predict and bench."""
    digit_images(tmp_path / "in", mnist, 60)
    (tmp_path / "out.csv").write_bytes(b"older results")
    done = toolkit("predict", tmp_path / "in", "--model", tiny_onnx, "--provider", "cpu", "--workers", "0",
                   "-o", tmp_path / "out.csv", "--force", preexec_fn=_file_size_limit(3000))
    line = one_error_line(done.stderr.decode())
    assert done.returncode == 1 and str(tmp_path / "out.csv") in line and "File too large" in line
    assert (tmp_path / "out.csv").read_bytes() == b"older results" and no_part_files(tmp_path)
    done = toolkit("bench", "--model", tiny_onnx, *BENCH_FAST, "--engines", "onnx", "--json", tmp_path / "b.json",
                   preexec_fn=_file_size_limit(1000))
    line = one_error_line(done.stderr.decode())
    assert done.returncode == 1 and str(tmp_path / "b.json") in line and "nothing was written" in line
    assert not (tmp_path / "b.json").exists() and no_part_files(tmp_path)


# ---------------------------------------------------------------- item 11: files that appear during a run

def test_no_force_never_replaces_a_file_that_appeared_meanwhile(tmp_path):
    out = tmp_path / "out.csv"
    for n in (1, 2):  # out.1.csv taken too: the next free name
        with pytest.raises(OutputError) as info:
            with atomic_path(out) as tmp:
                tmp.write_text(f"ours {n}")
                if n == 1:
                    out.write_text("theirs")
        assert out.read_text() == "theirs"
        assert (tmp_path / f"out.{n}.csv").read_text() == f"ours {n}"
        assert f"the results are in {tmp_path / f'out.{n}.csv'} instead" in str(info.value)
        assert info.value.path == str(out) and no_part_files(tmp_path)
    # a dangling symlink is a name taken too: never followed, never replaced
    link = tmp_path / "link.json"
    link.symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(OutputError):
        write_text(link, "ours")
    assert link.is_symlink() and not (tmp_path / "elsewhere.json").exists()
    assert (tmp_path / "link.1.json").read_text() == "ours"
    # --force: the atomic replace of today
    write_text(out, "forced", replace=True)
    assert out.read_text() == "forced" and no_part_files(tmp_path)


def _wait_for_part(folder: Path, name: str, procs, min_size: int = 1, count: int = 1) -> None:
    """Until ``count`` runs are writing their temporary files (the up-front checks are behind them)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and all(p.poll() is None for p in procs):
        parts = list(folder.glob(f".{name}.*.part"))
        with contextlib.suppress(FileNotFoundError):
            if len(parts) >= count and min(p.stat().st_size for p in parts) >= min_size:
                return
        time.sleep(0.005)
    pytest.fail(f"the runs ended or never started writing: {[p.poll() for p in procs]}")


def test_predict_output_created_during_the_run_is_kept(tiny_onnx, mnist, tmp_path):
    digit_images(tmp_path / "in", mnist, 800)
    out = tmp_path / "out.csv"
    proc = subprocess.Popen([sys.executable, "-m", "toolkit", "predict", str(tmp_path / "in"), "--model",
                             str(tiny_onnx), "--provider", "cpu", "--batch-size", "1", "-o", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_part(tmp_path, "out.csv", [proc], min_size=2000)  # the run is well under way
    out.write_text("another program's file\n")
    _, stderr = proc.communicate(timeout=120)
    line = one_error_line(stderr)
    assert proc.returncode == 1
    assert str(out) in line and str(tmp_path / "out.1.csv") in line
    assert out.read_text() == "another program's file\n"
    with open(tmp_path / "out.1.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 800
    assert no_part_files(tmp_path)


def test_two_concurrent_runs_to_one_output_lose_nothing(tiny_onnx, mnist, tmp_path):
    """A long run and a short one to the same -o, the short one started while the long one writes: both pass
    the up-front check, the short one takes the name, the long one's rows go beside it (never over it)."""
    from hostile_graphs import endless_loop

    digit_images(tmp_path / "long", mnist, 1000)
    digit_images(tmp_path / "short", mnist, 50)
    out = tmp_path / "same.jsonl"
    # ~6 ms a batch of one on any machine (a Loop of 6,000 trips): the long run outlasts the short one's start-up
    slow = endless_loop(tmp_path / "slow.onnx", trips=6_000)

    def start(folder, model):
        return subprocess.Popen([sys.executable, "-m", "toolkit", "predict", str(folder), "--model", str(model),
                                 "--provider", "cpu", "--workers", "0", "--batch-size", "1", "-o", str(out)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    long = start(tmp_path / "long", slow)
    _wait_for_part(tmp_path, "same.jsonl", [long])
    short = start(tmp_path / "short", tiny_onnx)
    assert short.wait(timeout=120) == 0, short.stderr.read()
    assert long.poll() is None, "the long run ended first: no race was tested"
    assert long.wait(timeout=120) == 1
    assert str(tmp_path / "same.1.jsonl") in one_error_line(long.stderr.read())
    assert len(out.read_text().splitlines()) == 50  # the short run's rows, untouched
    assert len((tmp_path / "same.1.jsonl").read_text().splitlines()) == 1000  # the long run's, complete
    assert no_part_files(tmp_path)


# ---------------------------------------------------------------- item 12: one path, two roles

def test_same_path_sees_through_spellings_and_links(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("a.csv").write_text("x")
    os.symlink("a.csv", "sym.png")
    os.link("a.csv", "hard.png")
    os.symlink("missing.csv", "dangling.png")
    assert same_path("a.csv", "./a.csv") and same_path("a.csv", tmp_path / "a.csv")
    assert same_path("a.csv", "sym.png") and same_path("a.csv", "hard.png")
    assert same_path("missing.csv", "dangling.png") and same_path("sub/../missing.csv", "missing.csv")
    assert not same_path("a.csv", "b.csv")


def test_predict_refuses_one_file_for_two_roles(tmp_path, monkeypatch):
    """Usage errors before the model is even opened: no model file is needed here."""
    monkeypatch.chdir(tmp_path)
    Path("in").mkdir()
    Image.new("L", (28, 28)).save("in/a.png")
    Image.new("L", (28, 28)).save("b.png")
    Path("res.csv").write_text("path\n")
    os.symlink("out.csv", "alias.png")  # dangling: out.csv does not exist yet
    cases = [
        (["b.png", "-o", "out.csv", "--confusion", "alias.png"], ["--output", "--confusion"]),
        (["b.png", "--confusion", "./b.png", "--force"], ["--confusion", "b.png"]),
        (["in", "--confusion", "in/a.png", "--force"], ["--confusion", "in"]),
        (["res.csv", "-o", "./res.csv", "--force"], ["--output", "res.csv"]),
        ([str(tmp_path / "b.png"), "--confusion", "b.png", "--force"], ["--confusion"]),
    ]
    for args, named in cases:
        result = invoke("predict", *args)
        assert result.exit_code == 2, (args, result.output)
        assert all(word in result.output for word in named), (args, result.output)
    Path("in/res.csv").write_text("path\n")  # a rerun writing its CSV into the folder it reads: allowed
    assert invoke("predict", "in", "-o", "in/res.csv", "--force", "--model", "none.onnx").exit_code == 1  # no model
    assert Path("b.png").stat().st_size > 0 and Path("in/a.png").stat().st_size > 0
    assert Path("res.csv").read_text() == "path\n"


def test_bench_refuses_one_file_for_two_outputs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("model.onnx").write_bytes(b"not read: the check comes first")
    os.symlink("x.out", "y.out")
    for json_path, plot_path in (("x.out", "x.out"), ("x.out", "./x.out"), ("x.out", "y.out"),
                                 ("model.onnx", None), (None, "./model.onnx")):
        args = ["bench", "--model", "model.onnx", "--force"]
        args += ["--json", json_path] if json_path else []
        args += ["--plot", plot_path] if plot_path else []
        result = invoke(*args)
        assert result.exit_code == 2, (args, result.output)
        assert ("--json" in result.output) or ("--plot" in result.output)
        if json_path and plot_path:
            assert "--json and --plot" in result.output
    assert not Path("x.out").exists() and Path("model.onnx").read_bytes().startswith(b"not read")


# ---------------------------------------------------------------- items 13-15: hostile file names

HOSTILE = ["cr\rname", "lf\nname", "crlf\r\nname", "tab\tname", 'quote"name', "comma,name", "semi;name",
           "'apostrophe", " lead space", "trail space ", "é-ünï", "esc\x1b[31mred", "bell\x07", "=SUM(1+1)",
           "+plus", "-minus", "@at", "\tlead tab", "\rlead cr", "del\x7fname", "bidi\u202eevil"]
RAW = [b"latin1-\xe9", b"byte-\xff\xfe"]  # not UTF-8: Python holds them as surrogateescape'd str


def hostile_folder(root: Path, mnist, stems=None) -> list[str]:
    root.mkdir()
    names = []
    for i, stem in enumerate(stems or [os.fsencode(s) for s in HOSTILE] + RAW):
        path = os.path.join(os.fsencode(root), stem + b".png")
        Image.fromarray(mnist.test_images[i]).save(path, format="PNG")
        names.append(os.fsdecode(path))
    return sorted(names)


def test_every_name_round_trips_through_csv_and_jsonl(tiny_onnx, mnist, tmp_path):
    names = hostile_folder(tmp_path / "in", mnist)
    for out in (tmp_path / "out.csv", tmp_path / "out.jsonl"):
        result = invoke("predict", tmp_path / "in", "--model", tiny_onnx, "--provider", "cpu", "-o", out)
        assert result.exit_code == 0, result.output
        with open(out, newline="", encoding="utf-8", errors="surrogateescape") as f:
            if out.suffix == ".csv":
                rows = list(csv.DictReader(f))
                assert all(len(row) == len(rows[0]) and None not in row.values() for row in rows)
            else:
                rows = [json.loads(line) for line in f.read().split("\n") if line]
        written = sorted(row["path"] for row in rows)
        assert written == names  # exactly: CR, LF, quotes, commas, raw bytes
        assert all(os.path.exists(p) for p in written)


def test_formula_prefixes_are_neutralised_only_in_path_display(tiny_onnx, mnist, tmp_path, monkeypatch):
    names = hostile_folder(tmp_path / "in", mnist)
    # Relative names, as a user in that folder types them: the path cell then starts with the name itself.
    monkeypatch.chdir(tmp_path / "in")
    relative = sorted(os.path.basename(n) for n in names)
    out = tmp_path / "out.csv"
    result = invoke("predict", "--model", tiny_onnx, "--provider", "cpu", "-o", out, "--", *relative)
    assert result.exit_code == 0, result.output
    with open(out, newline="", encoding="utf-8", errors="surrogateescape") as f:
        rows = list(csv.DictReader(f))
    assert [r["path"] for r in rows] == relative  # path never lies: exactly the name, formula or not
    formulas = [r for r in rows if r["path"].startswith(("=", "+", "-", "@", "\t", "\r"))]
    assert len(formulas) == 6
    for row in rows:
        assert row["path_display"] == ("'" + row["path"] if row in formulas else row["path"])
    assert "path_display" in " ".join(invoke("predict", "--help").output.split())
    assert "path_display" in (Path(__file__).resolve().parent.parent / "docs" / "predict.md").read_text()


def test_printable_escapes_what_a_terminal_would_obey():
    assert printable("a\x1b[31mb\rc\nd\x07e\x7f\x9b") == "a\\x1b[31mb\\rc\\nd\\x07e\\x7f\\x9b"
    assert printable("evil\u202etxt.png\u2066") == "evil\\u202etxt.png\\u2066"
    assert printable(os.fsdecode(b"raw-\xff")) == "raw-\\xff"
    assert printable("é ünï 数字 tab-free") == "é ünï 数字 tab-free"
    assert printable(OutputError("x\ry", "bad")) == "x\\ry: bad"


def _raw_controls(stream: bytes) -> list[str]:
    """Control characters in a stream, other than the line ends the tool prints itself."""
    text = stream.decode("utf-8")  # undecodable bytes would fail here: they must be escaped too
    return [repr(c) for c in text if (ord(c) < 0x20 and c != "\n") or 0x7f <= ord(c) <= 0x9f
            or c in "\u202e\u2066\u2028"]


def test_nothing_raw_reaches_the_terminal(tiny_onnx, mnist, tmp_path):
    # few enough for the table on stdout
    names = hostile_folder(tmp_path / "in", mnist, [b"esc\x1b[31mred", b"lf\nname", b"cr\rname", b"bell\x07",
                                                    b"bidi\xe2\x80\xaeevil", b"del\x7f", b"byte-\xff\xfe"])
    bad = tmp_path / "in" / "broken\x1b]0;owned\x07\r.png"  # skipped: not an image
    bad.write_bytes(b"not an image")
    # the table (few images), skipped lines, summary and "wrote" lines
    out = tmp_path / "o\x1b[2Jut\r.csv"
    done = toolkit("predict", tmp_path / "in", "--model", tiny_onnx, "--provider", "cpu", "-o", out,
                   "--confusion", tmp_path / "c\x07.png")
    assert done.returncode == 3, done.stderr  # one skipped
    assert _raw_controls(done.stdout) == [] and _raw_controls(done.stderr) == []
    stdout, stderr = done.stdout.decode(), done.stderr.decode()
    assert "esc\\x1b[31mred" in stdout and "byte-\\xff\\xfe" in stdout and "lf\\nname" in stdout
    assert "skipped" in stderr and "broken\\x1b]0;owned\\x07\\r.png" in stderr
    assert "o\\x1b[2Jut\\r.csv" in stderr
    assert len(stdout.splitlines()) == len(names) + 1  # header + one line per image: no forged lines
    # the CLI's error line
    done = toolkit("predict", bad.with_name("gone\x1b[31m\r\n.png"), "--model", tmp_path / "no\x1b[0mmodel.onnx")
    assert done.returncode == 1 and _raw_controls(done.stderr) == []
    one_error_line(done.stderr.decode())
    # a notice, with the -o name's control characters in it
    done = toolkit("predict", tmp_path / "in", "--model", tiny_onnx, "--provider", "cpu", "-o", out)
    assert done.returncode == 1 and _raw_controls(done.stderr) == []
    assert "already exists" in one_error_line(done.stderr.decode())

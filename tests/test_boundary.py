"""The runtime stays light: generating text imports none of the trainer's stack."""

import json
import subprocess
import sys

from conftest import TINY_GPT2
from tweetgen.version import version

HEAVY = ["torch", "transformers", "optimum", "datasets", "tweetgen.trainer"]


def test_generating_imports_no_heavy_module():
    code = (
        "import json, sys\n"
        "from tweetgen import Generator\n"
        f"gen = Generator.load({str(TINY_GPT2)!r})\n"
        "gen.generate('My dream is', n=2, seed=0)\n"
        "''.join(gen.stream('My dream is', seed=0))\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules or any(k.startswith(m + '.') for k in sys.modules)]))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


def test_generating_does_not_read_package_metadata():
    """importlib.metadata costs ~3 MB of resident memory (email, zipfile, ...) in every process that embeds the
    runtime: the version is read only when asked for."""
    code = (
        "import sys\n"
        "from tweetgen import Generator\n"
        f"Generator.load({str(TINY_GPT2)!r}).generate('My dream is', n=2, seed=0)\n"
        "print([m for m in ('importlib.metadata', 'email') if m in sys.modules])\n"
        "import tweetgen\n"
        "print(tweetgen.__version__ == tweetgen.version.version() != '', 'importlib.metadata' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["[]", "True True"]


def test_version_prints_the_installed_version():
    result = subprocess.run([sys.executable, "-m", "tweetgen", "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"tweetgen-run {version()}"


def test_cli_imports_no_heavy_module():
    code = (
        "import sys, tweetgen.cli\n"
        f"rc = tweetgen.cli.main(['-m', {str(TINY_GPT2)!r}, '--seed', '0', '--no-stream', 'Hi'])\n"
        f"bad = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "print('HEAVY', bad, file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "HEAVY []" in result.stderr, result.stderr


def test_the_cli_starts_before_onnxruntime_loads_so_ctrl_c_then_is_handled():
    """tweetgen-run's module imports nothing heavy: onnxruntime loads inside main(), where an interrupt exits 130
    instead of a traceback; `from tweetgen import Generator` still works, loading it then."""
    code = ("import sys, tweetgen, tweetgen.cli\n"
            "print('onnxruntime' in sys.modules, 'numpy' in sys.modules)\n"
            "from tweetgen import Generator, Request, __version__\n"
            "print('onnxruntime' in sys.modules, Generator.__name__, Request.__name__)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["False False", "True Generator Request"]


def test_an_interrupt_while_the_runtime_loads_exits_130(monkeypatch, capsys):
    import builtins

    import tweetgen.cli as cli

    real_import = builtins.__import__

    def interrupted(name, *args, **kwargs):
        if name == "generator" or name.endswith(".generator"):  # the runtime's load, as main() starts it
            raise KeyboardInterrupt
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", interrupted)
    assert cli.main(["-m", str(TINY_GPT2), "Hi"]) == 130
    assert "Traceback" not in capsys.readouterr().err

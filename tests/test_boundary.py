"""The runtime stays light: generating text imports none of the trainer's stack."""

import json
import subprocess
import sys

from conftest import TINY_GPT2

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


def test_cli_imports_no_heavy_module():
    code = (
        "import sys, tweetgen.cli\n"
        f"rc = tweetgen.cli.main(['-m', {str(TINY_GPT2)!r}, '--seed', '0', '--no-stream', 'Hi'])\n"
        f"bad = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "print('HEAVY', bad, file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "HEAVY []" in result.stderr, result.stderr

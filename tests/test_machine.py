"""The one machine description (mam_tf.common.machine) every benchmark and experiment prints."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mam_tf.common import machine

_INFO = {"platform": "Linux-x", "arch": "x86_64", "processor": "AMD EPYC", "isa": "AVX2",
         "cpus": 4, "cpus_usable": 2, "memory_bytes": 8 * 2**30, "load_average": [1.5, 0.25, 0],
         "python": "3.11.7", "numpy": "1.26.4", "tensorflow": "2.15.1"}


def test_line_states_cpu_cores_memory_load_and_versions():
    assert machine.line(_INFO) == (
        "machine: AMD EPYC, AVX2, 4 cores (2 usable), 8.0 GiB, load average 1.50 0.25 0.00; "
        "Python 3.11.7, numpy 1.26.4, TensorFlow 2.15.1")
    bare = {**_INFO, "cpus_usable": 4, "memory_bytes": None, "load_average": None}
    del bare["tensorflow"]
    assert machine.line(bare, label="host") == (
        "host: AMD EPYC, AVX2, 4 cores; Python 3.11.7, numpy 1.26.4")


def test_describe_is_json_and_loads_no_tensorflow_unless_asked():
    code = ("import json, sys; from mam_tf.common import machine; "
            "print(json.dumps(machine.describe())); print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    info = json.loads(out[0])
    assert out[1] == "False" and "tensorflow" not in info
    assert info["cpus"] >= info["cpus_usable"] >= 1
    assert info["python"] == ".".join(map(str, sys.version_info[:3]))


@pytest.mark.skipif(not Path("/proc/meminfo").is_file(), reason="no /proc/meminfo here")
def test_memory_and_load_agree_with_proc():
    total_kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                     if line.startswith("MemTotal:"))
    assert machine.memory_bytes() == pytest.approx(total_kib * 1024, rel=0.01)
    proc = [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    assert machine.load_average() == pytest.approx(proc, abs=0.5)  # it moves between reads

"""Sources: parsing on crafted /proc and cgroup trees in tmp_path, and the real ones here."""
from __future__ import annotations

import os

from pvpatch import _core
from pvpatch.hints import abi, sources


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def proc_stat(user, steal, running):
    return (f"cpu  {user} 0 0 100 0 0 0 {steal} 0 0\n"
            f"cpu0 1 0 0 1 0 0 0 0 0 0\ncpu1 1 0 0 1 0 0 0 0 0 0\ncpu2 1 0 0 1 0 0 0 0 0 0\n"
            f"intr 1\nprocs_running {running}\nprocs_blocked 0\n")


def test_proc_stat_runnable_cpus_and_steal_delta(tmp_path):
    write(tmp_path / "stat", proc_stat(100, 0, 5))
    s = sources.ProcStat(str(tmp_path))
    assert s.available
    assert s.take() == {"online_cpus": 3, "runnable": 4}  # the publisher is not counted
    write(tmp_path / "stat", proc_stat(175, 25, 1))        # +100 jiffies, 25 of them stolen
    assert s.take() == {"online_cpus": 3, "runnable": 0, "steal": 2500}


def test_proc_stat_unavailable_reasons(tmp_path):
    s = sources.ProcStat(str(tmp_path))
    assert not s.available and "stat" in s.reason
    write(tmp_path / "stat", "cpu  1 2 3\nprocs_running 1\n")
    s = sources.ProcStat(str(tmp_path))
    assert not s.available and "steal" in s.reason


def test_psi(tmp_path):
    s = sources.Psi(str(tmp_path))
    assert not s.available and "CONFIG_PSI" in s.reason
    write(tmp_path / "pressure" / "cpu",
          "some avg10=12.34 avg60=1.00 avg300=0.00 total=5\nfull avg10=0.00 avg60=0 avg300=0 total=0\n")
    s = sources.Psi(str(tmp_path))
    assert s.available and s.take() == {"psi_some_avg10": 1234}


def test_source_failing_mid_run_becomes_unavailable(tmp_path):
    write(tmp_path / "pressure" / "cpu", "some avg10=1.00 avg60=0 avg300=0 total=0\n")
    s = sources.Psi(str(tmp_path))
    assert s.available
    os.unlink(tmp_path / "pressure" / "cpu")
    assert s.take() == {} and not s.available and "missing" in s.reason


def fake_cgroup(tmp_path, version):
    proc, fs = tmp_path / "proc", tmp_path / "fs"
    if version == 2:
        write(proc / "self" / "cgroup", "0::/outer/inner\n")
        write(proc / "self" / "mountinfo",
              f"30 1 0:26 / {fs} rw - cgroup2 cgroup2 rw\n")
        write(fs / "outer" / "cpu.max", "150000 100000\n")          # 1.5 CPUs
        write(fs / "outer" / "inner" / "cpu.max", "max 100000\n")
        write(fs / "outer" / "inner" / "cpu.stat",
              "usage_usec 1\nnr_periods 100\nnr_throttled 10\nthrottled_usec 5\n")
    else:
        write(proc / "self" / "cgroup", "3:cpu,cpuacct:/job\n1:memory:/\n")
        write(proc / "self" / "mountinfo",
              f"31 1 0:27 / {fs} rw - cgroup cgroup rw,cpu,cpuacct\n")
        write(fs / "cpu.cfs_quota_us", "-1\n")
        write(fs / "cpu.cfs_period_us", "100000\n")
        write(fs / "job" / "cpu.cfs_quota_us", "50000\n")           # 0.5 CPU
        write(fs / "job" / "cpu.cfs_period_us", "100000\n")
        write(fs / "job" / "cpu.stat", "nr_periods 100\nnr_throttled 10\nthrottled_time 9\n")
    return proc, fs


def test_cgroup_v2_quota_up_the_tree_and_throttling(tmp_path):
    proc, fs = fake_cgroup(tmp_path, 2)
    s = sources.Cgroup(str(proc))
    assert s.available and s.name == "cgroup_v2" and s.bit == abi.SOURCE_CGROUP_V2, s.reason
    assert s.take() == {"cg_quota_mcpu": 1500}
    write(fs / "outer" / "inner" / "cpu.stat",
          "usage_usec 1\nnr_periods 200\nnr_throttled 35\nthrottled_usec 9\n")
    assert s.take() == {"cg_quota_mcpu": 1500, "cg_throttled": 2500}


def test_cgroup_v1(tmp_path):
    proc, fs = fake_cgroup(tmp_path, 1)
    s = sources.Cgroup(str(proc))
    assert s.available and s.name == "cgroup_v1", s.reason
    assert s.take() == {"cg_quota_mcpu": 500}
    write(fs / "job" / "cpu.stat", "nr_periods 110\nnr_throttled 20\nthrottled_time 9\n")
    assert s.take()["cg_throttled"] == 10000


def test_cgroup_v2_without_cpu_controller_says_why(tmp_path):
    proc, fs = tmp_path / "proc", tmp_path / "fs"
    write(proc / "self" / "cgroup", "0::/a\n")
    write(proc / "self" / "mountinfo", f"30 1 0:26 / {fs} rw - cgroup2 cgroup2 rw\n")
    write(fs / "a" / "cpu.stat", "usage_usec 1\n")
    s = sources.Cgroup(str(proc))
    assert not s.available and "cpu controller not enabled" in s.reason


def test_real_sources_report_available_or_why():
    for s in sources.default_sources():
        assert s.available or s.reason, s.name
        assert s.describe().startswith(s.name)
    st = sources.ProcStat()
    assert st.available and st.take()["online_cpus"] == os.cpu_count()


def test_cpuid_agrees_with_the_kernel():
    """The hypervisor bit and signature as the kernel reports them in /proc/cpuinfo."""
    with open("/proc/cpuinfo") as f:
        flags = next(line for line in f if line.startswith("flags")).split()
    s = sources.Cpuid()
    assert s.available and s.via == "pvpatch._core.cpuid"
    m = s.take()
    assert (m["hv_max_leaf"] >= 0x40000000) == ("hypervisor" in flags)
    a, b, c, d = _core.cpuid(0)
    vendor = (b.to_bytes(4, "little") + d.to_bytes(4, "little") + c.to_bytes(4, "little"))
    with open("/proc/cpuinfo") as f:
        cpu_vendor = next(line for line in f if line.startswith("vendor_id")).split(":")[1]
    assert vendor.decode() == cpu_vendor.strip()

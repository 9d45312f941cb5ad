#!/usr/bin/env python3
"""Where a queued packet's userspace instructions go: ``livepath.py`` under callgrind, per function.

    python benchmarks/livepath_profile.py [--burst 1] [--small 500] [--large 2500] [--stub-engine]

Root, ``valgrind``, ``callgrind_annotate`` and a C compiler with the interpreter's headers are
needed.  Python functions are invisible to callgrind (they all run in the interpreter's one eval
loop), so each function listed in ``TAGS`` is routed through its own tiny C function (``cgtag_NN``,
built here into a temporary directory): callgrind's inclusive cost of ``cgtag_NN`` is then that
Python function's cost, calls below it included.  The route itself costs its caller about 1,800
instructions per call (a Python wrapper and a C call; this script prints the figure measured in
the same way), so a caller's own share is its inclusive cost, less its tagged callees', less
that much per tagged call.

Every figure is a difference between two runs (``--small`` and ``--large`` transactions) over
the packets between them, so start-up and the build of the messages cancel out.  Also runs the
untagged ``inspector``, ``bare`` and ``none`` modes the same way: instructions per queued packet
of the inspector and of the bare NetfilterQueue loop, with nothing added.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
N_TAGS = 16
# (module, class, method): the functions whose inclusive cost is printed
TAGS = [
    ("inspector.service.loop", "Loop", "turn"),
    ("inspector.sources.nfqueue", "NfQueue", "read"),
    ("inspector.sources.nfqueue", "NfQueue", "accept_noted"),
    ("livepath", "Messages", "recv"),
    ("inspector.runner", "Runner", "handle"),
    ("inspector.engine", "Engine", "process"),
    ("inspector.runner", "Runner", "_reset"),
    ("inspector.runner", "Runner", "_after"),
    ("inspector.respond.bans", "BanPipeline", "issue"),
    ("inspector.respond.bans", "BanPipeline", "protected"),
    ("inspector.bans", "BanStore", "add"),
    ("inspector.firewall", "IpsetFirewall", "ban"),
    ("inspector.service", "Fanout", "emit"),
]
# C functions callgrind sees by name
C_FUNCTIONS = {
    "run_socket": "NetfilterQueue.run_socket (binding)",
    "nfq_handle_packet": "nfq_handle_packet (libnetfilter_queue, with the callback)",
    "global_callback": "the binding's callback (Packet object, then ours)",
    "select_epoll_poll": "epoll.poll",
    "timemodule.c:time_time": "time.time",
    "thread_run": "other threads (event and state writers)",
}


def build_tags(where: Path) -> Path:
    """Compile the trampoline module ``cgtag`` into ``where``; returns the directory to import it from."""
    fns = "\n".join(f"""
__attribute__((noinline)) static PyObject *cgtag_{i:02d}(PyObject *self, PyObject *const *args, Py_ssize_t n) {{
    volatile int tag = {i};
    (void)tag;
    if (n < 1) {{ PyErr_SetString(PyExc_TypeError, "a callable first"); return NULL; }}
    return PyObject_Vectorcall(args[0], args + 1, n - 1, NULL);
}}""" for i in range(1, N_TAGS + 1))
    table = ",\n".join(f'    {{"t{i:02d}", (PyCFunction)(void(*)(void))cgtag_{i:02d}, METH_FASTCALL, NULL}}'
                       for i in range(1, N_TAGS + 1))
    src = (f"#define PY_SSIZE_T_CLEAN\n#include <Python.h>\n{fns}\nstatic PyMethodDef methods[] = {{\n{table},\n"
           "    {NULL, NULL, 0, NULL}\n};\n"
           'static struct PyModuleDef mod = {PyModuleDef_HEAD_INIT, "cgtag", NULL, -1, methods};\n'
           "PyMODINIT_FUNC PyInit_cgtag(void) { return PyModule_Create(&mod); }\n")
    (where / "cgtag.c").write_text(src)
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    # -fno-ipa-icf: identical functions must stay distinct, or callgrind would see one name
    subprocess.run([os.environ.get("CC", "cc"), "-O1", "-fno-ipa-icf", "-shared", "-fPIC",
                    f"-I{sysconfig.get_paths()['include']}", str(where / "cgtag.c"),
                    "-o", str(where / f"cgtag{suffix}")], check=True)
    return where


def child_tagged(tagdir: str, argv: list[str]) -> int:
    """Inside callgrind: route the TAGS through cgtag, then run livepath's child."""
    import importlib

    sys.path[:0] = [tagdir, str(HERE), str(REPO)]
    cgtag = importlib.import_module("cgtag")
    names = {}
    for i, (modname, cls_name, meth) in enumerate(TAGS, start=1):
        cls = getattr(importlib.import_module(modname), cls_name)
        orig = cls.__dict__[meth]
        trampoline = getattr(cgtag, f"t{i:02d}")

        def wrapper(*a: object, _f: object = orig, _t: object = trampoline) -> object:
            return _t(_f, *a)  # type: ignore[operator]
        setattr(cls, meth, wrapper)
        names[f"cgtag_{i:02d}"] = f"{cls_name}.{meth}"
    if "--calibrate" in argv:  # the route's own cost: a no-op called through a wrapper as above, and directly
        def noop(a: object) -> object:
            return a

        def routed(*a: object, _f: object = noop, _t: object = cgtag.t16) -> object:
            return _t(_f, *a)  # type: ignore[operator]
        n = int(argv[argv.index("--calibrate") + 1])
        call = routed if "--tagged" in argv else noop
        for k in range(n):
            call(k)
        return 0
    livepath = importlib.import_module("livepath")
    sys.argv = ["livepath.py", "--child", *argv]
    return int(livepath.main())


def callgrind(args: list[str], out: Path) -> int:
    """Total instructions of one callgrind run (its output file kept at ``out``)."""
    cmd = ["unshare", "-n", "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *args]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{r.stderr[-3000:]}")
    m = re.search(r"^summary: (\d+)", out.read_text(errors="replace"), re.M)
    assert m, out
    return int(m.group(1))


def inclusive(out: Path) -> dict[str, int]:
    """Inclusive instructions per function name of a callgrind output (names summed over files)."""
    text = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", str(out)],
                          capture_output=True, text=True, check=True).stdout
    got: dict[str, int] = {}
    for line in text.splitlines():
        m = re.match(r"\s*([\d,]+) \([\s\d.]+%\)\s+(\S.*?)(?: \[.*\])?$", line)
        if m:
            got[m.group(2)] = got.get(m.group(2), 0) + int(m.group(1).replace(",", ""))
    return got


def pick(cost: dict[str, int], key: str) -> int:
    """The largest inclusive cost among the names that end in ``key`` (a C function's several file lines)."""
    return max((v for k, v in cost.items() if k.endswith(key) or k.endswith(":" + key)), default=0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--burst", type=int, default=1, help="messages per wakeup (default 1)")
    ap.add_argument("--small", type=int, default=500, help="transactions of the smaller run (default 500)")
    ap.add_argument("--large", type=int, default=2500, help="transactions of the larger run (default 2500)")
    ap.add_argument("--stub-engine", action="store_true", help="the engine accepts at once (livepath.py's option)")
    ap.add_argument("--jobs", type=int, default=2, help="callgrind runs at a time (default 2)")
    ap.add_argument("--child-tagged", metavar="DIR", help=argparse.SUPPRESS)
    args, rest = ap.parse_known_args()
    if args.child_tagged:  # the options parsed here are livepath.py's too: hand them on
        return child_tagged(args.child_tagged, [*rest, "--burst", str(args.burst)]
                            + (["--stub-engine"] if args.stub_engine else []))
    if os.geteuid() != 0:
        print("livepath_profile: needs root (livepath.py's private namespace)", file=sys.stderr)
        return 2
    py = sys.executable
    common = ["--rounds", "1", "--burst", str(args.burst)] + (["--stub-engine"] if args.stub_engine else [])
    with tempfile.TemporaryDirectory(prefix="livepath-profile-") as tmp:
        d = Path(tmp)
        tagdir = str(build_tags(d))
        jobs: dict[str, list[str]] = {}
        for n in (args.small, args.large):
            for mode in ("inspector", "bare", "none"):
                jobs[f"{mode}-{n}"] = [py, str(HERE / "livepath.py"), "--child", "--mode", mode,
                                       "--transactions", str(n), *common]
            jobs[f"tagged-{n}"] = [py, __file__, "--child-tagged", tagdir, "--mode", "inspector",
                                   "--transactions", str(n), *common]
        for name, n in (("cal-plain-small", 10000), ("cal-plain-large", 110000)):
            jobs[name] = [py, __file__, "--child-tagged", tagdir, "--calibrate", str(n)]
        for name, n in (("cal-tagged-small", 10000), ("cal-tagged-large", 110000)):
            jobs[name] = [py, __file__, "--child-tagged", tagdir, "--calibrate", str(n), "--tagged"]
        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
            futures = {name: pool.submit(callgrind, cmd, d / f"{name}.out") for name, cmd in jobs.items()}
            total = {name: f.result() for name, f in futures.items()}
        # livepath's workload: SYN, EHLO, MAIL, RCPT, DATA; every 20th transaction ends at its RCPT
        packets = (5 * args.large - args.large // 20) - (5 * args.small - args.small // 20)
        route = ((total["cal-tagged-large"] - total["cal-tagged-small"])
                 - (total["cal-plain-large"] - total["cal-plain-small"])) / 100000

        def per_packet(mode: str) -> float:
            return ((total[f"{mode}-{args.large}"] - total[f"{mode}-{args.small}"])
                    - (total[f"none-{args.large}"] - total[f"none-{args.small}"])) / packets

        small, large = inclusive(d / f"tagged-{args.small}.out"), inclusive(d / f"tagged-{args.large}.out")
        rows = []
        for i, (_m, cls_name, meth) in enumerate(TAGS, start=1):
            key = f"cgtag_{i:02d}"
            rows.append((f"{cls_name}.{meth}", (pick(large, key) - pick(small, key)) / packets))
        for key, label in C_FUNCTIONS.items():
            rows.append((label, (pick(large, key) - pick(small, key)) / packets))
        result = {"burst": args.burst, "packets": packets, "stub_engine": args.stub_engine,
                  "inspector": per_packet("inspector"), "bare": per_packet("bare"), "route": route,
                  "inclusive": dict(rows)}
    print(f"# userspace instructions per queued packet, {args.burst} per wakeup, over the {packets:,} packets"
          f" between {args.small:,} and {args.large:,} transactions"
          + (" (engine stubbed)" if args.stub_engine else ""))
    print(f"   inspector {result['inspector']:10,.0f}   bare loop {result['bare']:10,.0f}"
          f"   ratio {result['inspector'] / result['bare']:.2f}")
    print(f"# inclusive, per packet (tagged run; each tagged call adds about {route:,.0f} to its caller)")
    for label, v in rows:
        print(f"   {v:10,.0f}  {label}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`zerotrace check`: what this host's kernel offers the agent, and the probe set used.

Every check is a real attempt (a map created, a file read) rather than a version
guess, because custom kernels (like this project's CI) turn features off freely.
"""

from __future__ import annotations

import ctypes as ct
import os
import platform
import subprocess
import uuid
from dataclasses import dataclass

from agent.probes import btf

TRACEFS = "/sys/kernel/tracing"
PMU_DIR = "/sys/bus/event_source/devices"
BPF_MAP_CREATE = 0
BPF_MAP_TYPE_ARRAY, BPF_MAP_TYPE_RINGBUF = 2, 27
NR_BPF = 321  # x86_64


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    required: bool = False


def _bpf_map_create(map_type: int, key: int, value: int, entries: int) -> tuple[bool, str]:
    libc = ct.CDLL(None, use_errno=True)
    attr = (ct.c_uint32 * 30)()  # union bpf_attr, zero-filled, prefix is all we set
    attr[0], attr[1], attr[2], attr[3] = map_type, key, value, entries
    fd = libc.syscall(NR_BPF, BPF_MAP_CREATE, ct.byref(attr), ct.sizeof(attr))
    if fd < 0:
        return False, os.strerror(ct.get_errno())
    os.close(fd)
    return True, "map created"


def check_root() -> Check:
    ok = os.geteuid() == 0
    return Check("root", ok, "euid 0" if ok else "not root: run as root (or sudo)", True)


def check_bpf() -> Check:
    ok, why = _bpf_map_create(BPF_MAP_TYPE_ARRAY, 4, 8, 1)
    return Check("bpf syscall", ok, why, True)


def check_ringbuf() -> Check:
    ok, why = _bpf_map_create(BPF_MAP_TYPE_RINGBUF, 0, 0, 4096 * 4)
    return Check("ring buffer", ok, why if ok else f"{why} (kernel < 5.8?)", True)


def check_btf() -> Check:
    try:
        offs = btf.kernel_offsets()
    except btf.BTFError as e:
        return Check("BTF", False, str(e), True)
    return Check("BTF", True, f"{btf.VMLINUX_BTF}: {len(offs)} struct offsets resolved", True)


def check_tracefs() -> Check:
    ok = os.path.isdir(os.path.join(TRACEFS, "events"))
    detail = f"{TRACEFS}" if ok else (f"not mounted: mount -t tracefs nodev {TRACEFS} "
                                      "(scripts/setup.sh does it)")
    return Check("tracefs", ok, detail, True)


def check_syscall_tracepoints() -> Check:
    need = ["sys_enter_write", "sys_exit_read", "sys_enter_sendmsg", "sys_enter_connect",
            "sys_enter_close"]
    missing = [n for n in need if not os.path.isdir(f"{TRACEFS}/events/syscalls/{n}")]
    ok = not missing and os.path.isdir(f"{TRACEFS}/events/sock/inet_sock_set_state")
    detail = "syscalls:* and sock:inet_sock_set_state" if ok else (
        f"missing {', '.join(missing) or 'sock:inet_sock_set_state'} "
        "(CONFIG_FTRACE_SYSCALLS?)")
    return Check("syscall tracepoints", ok, detail, True)


def check_pmu(name: str, label: str) -> Check:
    ok = os.path.isdir(f"{PMU_DIR}/{name}")
    return Check(label, ok, f"{PMU_DIR}/{name}" if ok else f"no {name} PMU (CONFIG off)")


def check_fentry() -> Check:
    try:
        from bcc import BPF
    except ImportError:
        return Check("fentry", False, "bcc missing")
    if not BPF.support_kfunc():
        return Check("fentry", False, "bcc/kernel report no kfunc support")
    try:
        b = BPF(text="KFUNC_PROBE(tcp_sendmsg) { return 0; }")
        b.cleanup()
    except Exception as e:  # the load itself is the test: some kernels refuse it
        return Check("fentry", False, f"load refused ({str(e).splitlines()[0][:60]})")
    return Check("fentry", True, "a KFUNC_PROBE loaded")


def check_tc() -> Check:
    ns = f"zt-check-{uuid.uuid4().hex[:8]}"
    try:
        subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True)
        r = subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "lo",
                            "clsact"], capture_output=True, text=True)
        ok = r.returncode == 0
        return Check("TC (clsact)", ok, "clsact qdisc added in a scratch netns" if ok
                     else r.stderr.strip()[:80])
    except (OSError, subprocess.CalledProcessError) as e:
        return Check("TC (clsact)", False, f"could not test: {e}")
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def check_tcx() -> Check:
    """A TC program attached through a tcx link (Linux 6.6+), how the hop probes attach
    when they can (agent/probes/tcx.py), on lo of a scratch netns."""
    from agent.probes import tcx

    ns = f"zt-check-{uuid.uuid4().hex[:8]}"
    b = None
    try:
        from bcc import BPF

        b = BPF(text=b"int zt_check(struct __sk_buff *skb) { return -1; }")
        fd = b.load_func(b"zt_check", BPF.SCHED_CLS).fd
        subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True)
        os.close(tcx.attach(fd, 1, ingress=True, netns=ns))  # lo is ifindex 1
        return Check("TC (tcx)", True, "a tcx link made in a scratch netns")
    except OSError as e:
        return Check("TC (tcx)", False, f"no tcx links ({e.strerror}): clsact is used")
    except Exception as e:  # bcc refused the program, no ip(8)
        return Check("TC (tcx)", False, f"could not test: {str(e).splitlines()[0][:60]}")
    finally:
        if b is not None:
            b.cleanup()
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def check_tc_marks() -> Check:
    """How the network hops learn where a message starts (docs/network.md)."""
    from agent.probes.tc import has_sendmsg_tracepoint

    if has_sendmsg_tracepoint():
        return Check("TC hop marks", True, "raw tracepoint tcp_sendmsg_locked (TCP sends only)")
    return Check("TC hop marks", True, "syscall entry fallback: no tcp_sendmsg_locked "
                 "tracepoint (kernel < 6.10), one more fd walk per write")


def check_headers() -> Check:
    source = os.environ.get("BCC_KERNEL_SOURCE")
    if source:  # the agent image's generic headers (deploy/docker/merge-kernel-headers.sh)
        ok = os.path.isdir(os.path.join(source, "include"))
        return Check("kernel headers", ok, f"BCC_KERNEL_SOURCE={source}"
                     + ("" if ok else " has no include/"), True)
    build = f"/lib/modules/{platform.release()}/build"
    if not os.path.exists(os.path.join(build, "include")):
        return Check("kernel headers", False,
                     f"{build} missing: run scripts/setup.sh (links Debian's headers)", True)
    target = os.path.realpath(build)
    note = "" if platform.release() in target else " (another kernel's: offsets come from BTF)"
    return Check("kernel headers", True, f"{target}{note}", True)


def check_tls() -> list[Check]:
    """The TLS libraries the agent would put uprobes on (docs/tls.md): the system's
    libssl files, and the distinct libssl files running processes map (containers
    bring their own), each with the symbols it exports and how many processes map it."""
    from agent.probes import tls

    files: dict[tuple[int, int], tuple[str, set[int]]] = {}
    for path in tls.system_libssl():
        try:
            st = os.stat(path)
        except OSError:
            continue
        files.setdefault((st.st_dev, st.st_ino), (path, set()))
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        for path in tls.mapped_libssl(int(name)):
            try:
                st = os.stat(path)
            except OSError:
                continue
            files.setdefault((st.st_dev, st.st_ino), (path, set()))[1].add(int(name))
    out = []
    if not files:
        out.append(Check("TLS (OpenSSL)", False, "no libssl.so found: TLS stays ciphertext"))
    for path, pids in files.values():
        syms = tls.exported_symbols(path)
        ok = {"SSL_read", "SSL_write"} <= syms
        probes = [s for s in tls.SSL_SYMBOLS if s in syms]
        detail = (f"{tls.display_path(path)}: {', '.join(probes) or 'no SSL_* symbols'}"
                  f"{_inner_note(path) if ok else ''}; mapped by {len(pids)} process(es)")
        out.append(Check("TLS (OpenSSL)", ok, detail))
    return out + check_tls_executables()


def _inner_note(path: str) -> str:
    """Which directions are probed on OpenSSL's internal functions (docs/tls.md "Cost":
    ~10x cheaper a call on a VM than the public symbols' first instruction)."""
    from agent.probes import tls

    inner = tls.inner_functions(path)
    return f" (probed inside: {' and '.join(sorted(inner))})" if inner else ""


def check_tls_executables() -> list[Check]:
    """Running executables that carry their TLS code (docs/tls.md): Go programs
    (crypto/tls: followed or why not) and programs with OpenSSL/BoringSSL linked in
    (SSL_read/SSL_write in their own symbol table); one line per distinct file."""
    from agent.probes import gotls, tls

    exes: dict[tuple[int, int], tuple[str, str, set[int]]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        proc = f"/proc/{name}/exe"
        try:
            st = os.stat(proc)
            shown = os.readlink(proc)
        except OSError:
            continue
        exes.setdefault((st.st_dev, st.st_ino), (proc, shown, set()))[2].add(int(name))
    out = []
    for proc, shown, pids in exes.values():
        try:
            ok, what = gotls.quick_check(proc)
        except OSError:
            continue
        if what == "not a Go binary":
            syms = tls.static_ssl_symbols(proc)
            if not syms:
                continue
            ok = {"SSL_read", "SSL_write"} <= syms
            probes = [s for s in tls.SSL_SYMBOLS if s in syms]
            out.append(Check("TLS (OpenSSL linked in)", ok,
                             f"{shown}: {', '.join(probes)}"
                             f"{_inner_note(proc) if ok else ''}; run by {len(pids)} process(es)"))
        elif what != "no crypto/tls":
            out.append(Check("TLS (Go crypto/tls)", ok,
                             f"{shown}: {what}; run by {len(pids)} process(es)"))
    return out


def run_checks(with_fentry: bool = True, with_tc: bool = True) -> list[Check]:
    checks = [check_root()]
    if not checks[0].ok:
        return checks
    checks += [check_bpf(), check_ringbuf(), check_btf(), check_tracefs(),
               check_syscall_tracepoints(), check_pmu("kprobe", "kprobes"),
               check_pmu("uprobe", "uprobes"), check_headers()]
    if with_tc:
        checks += [check_tc(), check_tcx(), check_tc_marks()]
    if with_fentry:
        checks.append(check_fentry())
    checks += check_tls()
    return checks


def probe_set(checks: list[Check]) -> str:
    have = {c.name: c.ok for c in checks}
    parts = ["syscall tracepoints + sock:inet_sock_set_state"]
    if have.get("uprobes"):
        parts.append("uprobes available (TLS)")
    if have.get("TC (clsact)"):
        parts.append("TC available (network spans" + (", tcx links)" if have.get("TC (tcx)")
                                                     else ", clsact filters)"))
    if have.get("kprobes") or have.get("fentry"):
        parts.append("kprobes/fentry available (not needed)")
    return "; ".join(parts)


def blocking_reason(checks: list[Check]) -> str | None:
    """The first required capability that is missing, as a one-line reason."""
    for c in checks:
        if c.required and not c.ok:
            return f"{c.name}: {c.detail}"
    return None

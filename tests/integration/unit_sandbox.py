#!/usr/bin/python3
"""unit_sandbox.py UNIT COMMAND [ARG...]: runs COMMAND under the seccomp half of UNIT's sandbox,
as systemd would build it, for hosts where PID 1 is not systemd:

- SystemCallFilter=~GROUPS: the groups expanded by `systemd-analyze syscall-filter` (the very
  tables systemd uses); a listed call kills the process, as systemd's deny lists do;
- SystemCallArchitectures=native: another architecture's calls kill it too;
- RestrictAddressFamilies=: socket() with any other family fails with EAFNOSUPPORT;
- MemoryDenyWriteExecute=yes: writable+executable mappings and making memory executable fail
  with EPERM.

The capability bounding set, no_new_privs and the read-only file system are applied by the
caller (setpriv, a mount namespace)."""
import errno
import os
import socket
import subprocess
import sys

import seccomp

PROT_WRITE, PROT_EXEC = 0x2, 0x4
SHM_EXEC = 0o100000


def unit_settings(path):
    settings = {}
    for line in open(path):
        line = line.strip()
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


def expand(group, seen=None):
    """The system calls of a group such as @debug, nested groups included."""
    seen = set() if seen is None else seen
    if group in seen:
        return set()
    seen.add(group)
    out = subprocess.run(["systemd-analyze", "syscall-filter", "--no-pager", group], capture_output=True,
                         text=True, check=True).stdout
    calls = set()
    for line in out.splitlines()[1:]:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        calls |= expand(line, seen) if line.startswith("@") else {line}
    return calls


def main():
    unit, argv = sys.argv[1], sys.argv[2:]
    settings = unit_settings(unit)
    f = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    f.set_attr(seccomp.Attr.ACT_BADARCH, seccomp.KILL_PROCESS)  # SystemCallArchitectures=native

    for value in settings.get("SystemCallFilter", []):
        assert value.startswith("~"), "only deny lists are emulated"
        for name in value[1:].split():
            for call in sorted(expand(name) if name.startswith("@") else {name}):
                try:
                    f.add_rule(seccomp.KILL_PROCESS, call)
                except (RuntimeError, ValueError):
                    pass  # not a system call on this architecture

    for value in settings.get("RestrictAddressFamilies", []):
        allowed = {getattr(socket, name) for name in value.split()}
        for family in range(0, 46):
            if family not in allowed:
                f.add_rule(seccomp.ERRNO(errno.EAFNOSUPPORT), "socket", seccomp.Arg(0, seccomp.EQ, family))

    if settings.get("MemoryDenyWriteExecute") == ["yes"]:
        wx = PROT_WRITE | PROT_EXEC
        f.add_rule(seccomp.ERRNO(errno.EPERM), "mmap", seccomp.Arg(2, seccomp.MASKED_EQ, wx, wx))
        f.add_rule(seccomp.ERRNO(errno.EPERM), "mprotect", seccomp.Arg(2, seccomp.MASKED_EQ, PROT_EXEC, PROT_EXEC))
        f.add_rule(seccomp.ERRNO(errno.EPERM), "pkey_mprotect",
                   seccomp.Arg(2, seccomp.MASKED_EQ, PROT_EXEC, PROT_EXEC))
        f.add_rule(seccomp.ERRNO(errno.EPERM), "shmat", seccomp.Arg(2, seccomp.MASKED_EQ, SHM_EXEC, SHM_EXEC))

    f.load()
    os.execv(argv[0], argv)


if __name__ == "__main__":
    main()

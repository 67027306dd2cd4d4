"""What the host offers, read the same way by the integration tests (conftest.py) and by the soak
(bench/soak.py), which runs outside pytest."""
import pathlib
import re
import socket

JOURNAL_SOCKET = pathlib.Path("/run/systemd/journal/socket")


def unescape_mount_field(field):
    """/proc/mounts writes space, tab, newline and backslash in a path as octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def cgroup2_mount():
    """Where the unified hierarchy is mounted: /sys/fs/cgroup on most runners, elsewhere on hybrid
    hosts; never assumed."""
    with open("/proc/mounts") as f:
        for line in f:
            _, mnt, fstype = line.split()[:3]
            if fstype == "cgroup2":
                return pathlib.Path(unescape_mount_field(mnt))
    raise RuntimeError("no cgroup2 mount: cordon needs the unified hierarchy")


def journald_running():
    """The socket file outlives a killed journald: only a connect proves one is listening."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        s.connect(str(JOURNAL_SOCKET))
        return True
    except OSError:
        return False
    finally:
        s.close()

"""Peak resident memory of the current process, for benchmark child processes."""

from __future__ import annotations

import resource


def peak_rss_gb() -> float:
    """This process's peak RSS in GiB since its last exec.

    Not getrusage's ru_maxrss: Linux carries a process's ru_maxrss over execve, so a
    child started by fork + exec from a parent holding 10 GB reports at least 10 GB.
    VmHWM in /proc/self/status is the high-water mark of the current image only.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**20  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB on Linux

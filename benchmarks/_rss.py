"""Peak resident memory of this process, for the benchmark workers."""

from __future__ import annotations

import resource


def peak_rss_mb() -> float:
    """VmHWM: the high-water mark of this process's own memory since its exec. Not ru_maxrss: Linux carries the
    parent's resident set at fork into a child's ru_maxrss across exec, so a worker started by a parent that
    had loaded ONNX Runtime, torch and the models reported the parent's ~950 MB whatever it used itself."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

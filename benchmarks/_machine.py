"""The machine a benchmark ran on: a description for the result files, a header line for the tables, and a short
filesystem-safe tag (``amd-epyc-avx2``, ``intel-xeon-avx512-amx``) that names the result files, so that one
machine kind's run never overwrites another's: ``<stem>_<tag>.{json,txt,png}``, ``<stem>_<tag>_quick.*`` in
--quick mode (gitignored)."""

from __future__ import annotations

import os
import platform
import re
import sys
from pathlib import Path

# /proc/cpuinfo's vendor_id -> the word a tag starts with
VENDORS = {"GenuineIntel": "intel", "AuthenticAMD": "amd", "HygonGenuine": "hygon", "CentaurHauls": "centaur"}
# words of a model name that say nothing about the part
NOISE = {"intel", "amd", "hygon", "r", "tm", "cpu", "processor", "genuine", "core-count", "with", "radeon", "graphics"}


def read_cpuinfo(path: str = "/proc/cpuinfo") -> dict:
    """The first processor's fields of /proc/cpuinfo, the number of logical CPUs and of physical cores ({} when
    there is no such file, e.g. off Linux)."""
    try:
        text = Path(path).read_text()
    except OSError:
        return {}
    blocks = [b for b in text.split("\n\n") if b.strip()]
    procs = []
    for block in blocks:
        fields = {}
        for line in block.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields[key.strip()] = value.strip()
        procs.append(fields)
    if not procs:
        return {}
    first = procs[0]
    cores = {(p.get("physical id"), p.get("core id")) for p in procs if "core id" in p}
    return {
        "model_name": first.get("model name", ""),
        "vendor_id": first.get("vendor_id", ""),
        "cpu_family": first.get("cpu family", ""),
        "model": first.get("model", ""),
        "stepping": first.get("stepping", ""),
        "cache_size": first.get("cache size", ""),
        "logical_cpus": len(procs),
        "physical_cores": len(cores) or None,
    }


def model_words(model_name: str) -> list[str]:
    """The words that name the part: 'Intel(R) Xeon(R) Platinum 8480+ CPU @ 2.00GHz' -> ['xeon', 'platinum',
    '8480+']; 'AMD EPYC 7B13 64-Core Processor' -> ['epyc', '7b13']."""
    name = re.sub(r"\((r|tm)\)", " ", model_name.lower())
    name = re.sub(r"@.*$", " ", name)  # the clock
    name = re.sub(r"\b\d+-core\b", " ", name)
    return [w for w in name.split() if w not in NOISE]


def features_word(cpu: dict) -> str:
    """The vector width of the kernel set pyattn uses, and AMX or AVX512-BF16 where the CPU has them: 'avx2',
    'avx512-bf16', 'avx512-amx', 'avx2-vnni' (the avx512_vnni and avx512_bf16 sets name the machine as avx512 does)."""
    feats = cpu.get("features", {})
    isa = cpu.get("isa", "unknown")
    word = "avx2-vnni" if isa == "avx_vnni" else isa.split("_")[0]
    if feats.get("amx_tile"):
        word += "-amx"
    elif feats.get("avx512_bf16"):
        word += "-bf16"
    return word


def safe(text: str) -> str:
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9]+", "-", text.lower())).strip("-")


def describe() -> dict:
    """Everything about this machine that a result file should carry."""
    import numpy as np

    import pyattn

    info = read_cpuinfo()
    cpu = pyattn.cpu_info()
    vendor = VENDORS.get(info.get("vendor_id", ""), safe(info.get("vendor_id", "")) or platform.machine())
    words = model_words(info.get("model_name", ""))
    family = words[0] if words else "cpu"
    return {
        "tag": safe(f"{vendor}-{family}-{features_word(cpu)}"),
        "cpu_model": info.get("model_name") or platform.processor() or platform.machine(),
        "vendor": vendor,
        "cpuinfo": info,
        "isa": cpu["isa"],
        "available_isas": cpu["available_isas"],
        "features": [k for k, v in cpu["features"].items() if v],
        "amx_granted": cpu["amx_granted"],
        "cpu_count": os.cpu_count(),
        "physical_cores": info.get("physical_cores"),
        "cpu_info": cpu,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "pyattn": pyattn.__version__,
        "numpy": np.__version__,
    }


def package_versions(*names: str) -> dict:
    """{distribution: version or "not installed"}, read from the installed metadata (nothing is imported)."""
    from importlib import metadata

    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def headline(machine: dict) -> str:
    """One line for the top of a table: the CPU, its cores, the kernel set and the features that matter here."""
    info = machine.get("cpuinfo", {})
    fam = f", family {info['cpu_family']} model {info['model']}" if info.get("cpu_family") else ""
    cores = machine.get("physical_cores")
    return (
        f"CPU: {machine['cpu_model']} ({info.get('vendor_id') or machine['vendor']}{fam}), {machine['cpu_count']} "
        f"logical CPUs{f' / {cores} cores' if cores else ''}; pyattn kernels {machine['isa']}; "
        f"features {' '.join(machine['features']) or 'none'}; tag {machine['tag']}"
    )


def result_paths(out: Path, stem: str, machine: dict, quick: bool) -> dict:
    """{"json": out/<stem>_<tag>[_quick].json, "txt": ..., "png": ...}; the _quick names are gitignored."""
    base = f"{stem}_{machine['tag']}{'_quick' if quick else ''}"
    return {ext: Path(out) / f"{base}.{ext}" for ext in ("json", "txt", "png")}


if __name__ == "__main__":
    m = describe()
    print(headline(m))

"""Shared benchmark plumbing: the machine description and result files.

Every benchmark writes benchmarks/results/<name>.json (raw figures) and <name>.md (the
table for the README), both naming the machine and the date.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem_gib = float("nan")
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem_gib, 1), "gpu": gpu,
            "python": platform.python_version(), "torch": torch.__version__,
            "date": datetime.date.today().isoformat()}


def machine_line(info: dict | None = None) -> str:
    info = info or machine()
    gpu = f", GPU {info['gpu']}" if info.get("gpu") else ", no GPU"
    return (f"Machine: {info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB{gpu}; "
            f"Python {info['python']}, torch {info['torch']}; {info['date']}.")


def write_results(name: str, results: dict, markdown: str, directory: Path | None = None) -> None:
    """Write <name>.json and <name>.md atomically (into `directory`, default benchmarks/results)
    and print the table."""
    directory = Path(directory) if directory else RESULTS
    directory.mkdir(parents=True, exist_ok=True)
    info = results.setdefault("machine", machine())
    text = f"{markdown}\n\n{machine_line(info)}\n"
    for path, content in ((directory / f"{name}.json", json.dumps(results, indent=2, default=str)),
                          (directory / f"{name}.md", text)):
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(content)
        tmp.replace(path)
    print(text)

"""Run benchmarks: ``python -m benchmarks [NAME...]`` -> ``build/bench/NAME.json``."""
from __future__ import annotations

import importlib
import json
import pkgutil
import sys
from pathlib import Path

import benchmarks

from .common import ROOT

KEYS = ("metric", "unit", "value", "baseline", "baseline_value", "config")


def available() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(benchmarks.__path__) if m.name not in ("common", "__main__"))


def run_one(name: str, out_dir: Path) -> dict:
    module = importlib.import_module(f"benchmarks.{name}")
    result = module.run()
    missing = [key for key in KEYS if key not in result]
    if missing:
        raise ValueError(f"benchmark {name} did not report {missing}")
    record = {"name": name, **{key: result[key] for key in KEYS}}
    record["ratio"] = result["value"] / result["baseline_value"]
    record.update({k: v for k, v in result.items() if k not in record})
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record


def main(argv: list[str]) -> int:
    names = argv or available()
    unknown = sorted(set(names) - set(available()))
    if unknown:
        print(f"unknown benchmark(s) {unknown}; available: {available()}", file=sys.stderr)
        return 2
    out_dir = ROOT / "build" / "bench"
    for name in names:
        record = run_one(name, out_dir)
        print(f"{name:<16} {record['metric']}: {record['value']:.4g} {record['unit']} vs "
              f"{record['baseline']} {record['baseline_value']:.4g} {record['unit']} -> ratio {record['ratio']:.3f}",
              flush=True)
    print(f"wrote {out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

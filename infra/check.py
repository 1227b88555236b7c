"""`make infra-check` core: parse every Bicep file with pycep-parser, then run checkov with our custom checks.

Run with the interpreter of .venv-infra (infra/check.sh does). Exits non-zero when a file does not parse, a check
fails, a check crashes (checkov logs and drops it, which would hide a gap), a custom check did not run, or a
suppression has no reason. Prints the checkov summary: passed/failed/skipped counts.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
CUSTOM_CHECKS = INFRA / "checks"
# Every custom check must report on at least one resource, or it silently checks nothing.
CUSTOM_CHECK_IDS = tuple(f"CKV_MTD_{n}" for n in range(1, 8))


def parse_all() -> int:
    """Parse each .bicep under infra/ with pycep-parser; return the number of failures."""
    from pycep import BicepParser  # the venv's, not the app's

    failures = 0
    files = sorted(INFRA.rglob("*.bicep"))
    for path in files:
        try:
            BicepParser().parse(file_path=path)
        except Exception as exc:  # noqa: BLE001 - report every broken file, not just the first
            failures += 1
            print(f"PARSE ERROR {path.relative_to(ROOT)}: {type(exc).__name__}: {exc}")
    print(f"pycep-parser: parsed {len(files) - failures}/{len(files)} Bicep files")
    return failures


def run_checkov() -> int:
    """Run checkov on infra/ and print its summary; return the number of problems."""
    checkov = Path(sys.executable).parent / "checkov"
    cmd = [
        str(checkov),
        "--directory", str(INFRA),
        "--framework", "bicep",
        "--skip-download",
        "--external-checks-dir", str(CUSTOM_CHECKS),
        "--output", "json",
        "--compact",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        print(proc.stdout[-4000:], proc.stderr[-4000:], sep="\n")
        print("checkov: could not read its JSON report")
        return 1
    reports = report if isinstance(report, list) else [report]
    problems = 0
    passed: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    parsing_errors: list[str] = []
    for rep in reports:
        results = rep.get("results", {})
        passed += results.get("passed_checks", [])
        failed += results.get("failed_checks", [])
        skipped += results.get("skipped_checks", [])
        parsing_errors += results.get("parsing_errors", [])
    for rec in failed:
        print(f"FAILED  {rec['check_id']} {rec['check_name']} -- {rec['file_path']}:{rec['resource']}")
    for rec in skipped:
        comment = str((rec.get("check_result") or {}).get("suppress_comment") or "").strip()
        print(f"SKIPPED {rec['check_id']} {rec['file_path']}:{rec['resource']} -- {comment}")
        if len(comment) < 20:
            print(f"  suppression of {rec['check_id']} needs a reason")
            problems += 1
    for err in parsing_errors:
        print(f"checkov parsing error: {err}")
    crashed = [
        line for line in proc.stderr.splitlines() if "Failed to run check" in line or "Cannot load external" in line
    ]
    for line in crashed:
        print(f"checkov error: {line.strip()}")
    # A suppression that no longer matches a check is misleading: keep the templates' skips and checkov's in step.
    declared = {
        (path.relative_to(INFRA).as_posix(), match)
        for path in INFRA.rglob("*.bicep")
        for match in re.findall(r"checkov:skip=([A-Z0-9_]+)", path.read_text())
    }
    used = {(str(rec["file_path"]).lstrip("/"), str(rec["check_id"])) for rec in skipped}
    for file_name, check_id in sorted(declared - used):
        print(f"stale suppression: {check_id} in infra/{file_name} matched no check")
        problems += 1
    seen = {str(rec["check_id"]) for rec in passed + failed + skipped}
    missing = [cid for cid in CUSTOM_CHECK_IDS if cid not in seen]
    if missing:
        print(f"custom checks that reported nothing: {', '.join(missing)}")
    resources = sum(int(rep.get("summary", {}).get("resource_count", 0)) for rep in reports)
    print(
        f"checkov summary: passed={len(passed)} failed={len(failed)} skipped={len(skipped)} "
        f"parsing_errors={len(parsing_errors)} resources={resources}"
    )
    problems += len(failed) + len(parsing_errors) + len(crashed) + len(missing)
    return problems


def main() -> int:
    """Parse, then scan; non-zero exit on any problem."""
    problems = parse_all()
    problems += run_checkov()
    if problems:
        print(f"infra check: {problems} problem(s)")
        return 1
    print("infra check: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())

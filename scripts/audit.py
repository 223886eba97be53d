"""The dependency audit: every pinned version in constraints.txt against known vulnerabilities.

pip-audit does the lookup. Its own verdict is not trusted as it stands: when the
vulnerability service cannot be reached it skips every package and still says
"No known vulnerabilities found" and exits 0. So the JSON report is judged here:

- any vulnerability found            -> exit 1, each listed with its fix versions;
- packages that could not be audited -> said loudly; exit 1 when AUDIT_REQUIRED=1
  (set it where the vulnerability service is reachable), else exit 0, because an
  unreachable service says nothing about our dependencies;
- everything audited and clean       -> exit 0.

    .venv/bin/python scripts/audit.py [constraints.txt]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Verdict:
    audited: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # name -> why
    vulnerable: dict[str, list[str]] = field(default_factory=dict)  # name -> "ID (fix: x)"

    def exit_code(self, required: bool) -> int:
        if self.vulnerable:
            return 1
        return 1 if required and self.skipped else 0

    def report(self) -> str:
        lines = [f"dependency audit: {len(self.audited)} audited, {len(self.vulnerable)} "
                 f"vulnerable, {len(self.skipped)} not audited"]
        for name, found in sorted(self.vulnerable.items()):
            lines.append(f"  VULNERABLE {name}: {', '.join(found)}")
        if self.skipped:
            reasons = sorted(set(self.skipped.values()))
            lines.append(f"  NOT AUDITED ({len(self.skipped)}): the vulnerability service gave "
                         f"no answer, e.g. {reasons[0]}")
        return "\n".join(lines)


def judge(report: dict[str, object]) -> Verdict:
    """A pip-audit JSON report (`-f json`) as a verdict."""
    verdict = Verdict()
    for dep in report.get("dependencies", []):  # type: ignore[union-attr]
        name = f"{dep['name']}=={dep.get('version', '?')}"
        if "skip_reason" in dep:
            verdict.skipped[name] = dep["skip_reason"]
            continue
        verdict.audited.append(name)
        vulns = dep.get("vulns") or []
        if vulns:
            verdict.vulnerable[name] = [
                f"{v['id']} (fix: {', '.join(v.get('fix_versions') or ['none'])})"
                for v in vulns]
    return verdict


def run_pip_audit(constraints: Path) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-m", "pip_audit", "-r", str(constraints), "--no-deps",
         "--disable-pip", "--progress-spinner", "off", "-f", "json", "--timeout", "15"],
        capture_output=True, text=True, check=False)
    try:
        report: dict[str, object] = json.loads(done.stdout)
    except json.JSONDecodeError:
        print(done.stderr[-2000:], file=sys.stderr)
        return {"dependencies": [{"name": "(all)", "skip_reason": "pip-audit failed to run"}]}
    return report


def main() -> int:
    constraints = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "constraints.txt"
    verdict = judge(run_pip_audit(constraints))
    print(verdict.report())
    return verdict.exit_code(required=os.environ.get("AUDIT_REQUIRED") == "1")


if __name__ == "__main__":
    sys.exit(main())

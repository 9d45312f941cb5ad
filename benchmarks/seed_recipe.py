#!/usr/bin/env python3
"""Print, case by case, what the seeds' ``iptables -m string`` recipe and the engine decide.

    python benchmarks/seed_recipe.py
"""

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.string_recipe import StringRecipe
from inspector.config import Config
from inspector.engine import Engine
from inspector.rules import DOMAIN, RuleFile, load_rules
from tests.test_seed_recipe import CASES, RULE


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rules.txt"
        path.write_text(RULE + "\n")
        rules = load_rules([RuleFile(path, DOMAIN)])
    print(f"rule: {RULE}   (recipe: -m string --algo bm --string \"@{RULE}\", per packet, case-sensitive)\n")
    print(f"{'case':<26} {'should':<9} {'recipe':<16} {'engine':<16}")
    for name, (packets, should, _) in CASES.items():
        engine = Engine(Config(), rules)
        eng = any(engine.process(p, i * 0.01).reason is not None for i, p in enumerate(packets))
        rec = StringRecipe([RULE]).matches(packets) > 0

        def show(got: bool, should: bool = should) -> str:
            return ("block" if got else "pass") + ("" if got == should else "  WRONG")
        print(f"{name:<26} {'block' if should else 'pass':<9} {show(rec):<16} {show(eng):<16}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

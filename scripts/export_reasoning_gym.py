"""Write reasoning-gym's GSM8K-style problems (with worked solutions) to a JSON Lines file.

    python scripts/export_reasoning_gym.py --n 30 --seed 1234 --out data/gsm_symbolic.jsonl

Each line holds prompt, response (step-by-step solution ending in \\boxed{answer}), answer,
category and id, so `prismatic score`, `compare` and `select` read it without --fields.
Generated offline by the `reasoning-gym` package (a dependency); the same seed gives the
same problems.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prismatic_assets.core.evaluation import gsm_symbolic_set  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=30, help="how many problems (default 30)")
    parser.add_argument("--seed", type=int, default=1234, help="reasoning-gym seed (default 1234)")
    parser.add_argument("--out", required=True, help="the .jsonl file to write")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for s in gsm_symbolic_set(args.n, seed=args.seed):
            f.write(json.dumps({"id": s.sample_id, "prompt": s.prompt, "response": s.response, "answer": s.answer,
                                "category": s.category}, ensure_ascii=False) + "\n")
    os.replace(tmp, out)
    print(f"wrote {args.n} problems to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

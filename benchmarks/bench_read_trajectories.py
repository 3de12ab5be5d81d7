"""CPU time of reading a trajectory file (``read_trajectories``): N copies of one vendored record
under distinct ids, one process, one thread.

    python benchmarks/bench_read_trajectories.py --records 2000
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from tabom.trajectory import read_trajectories

SOURCE = Path(__file__).parents[1] / "tests" / "data" / "trajectories-v1" / "fixed.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--records", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    record = json.loads(SOURCE.read_text().splitlines()[0])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t.jsonl"
        with path.open("w") as f:
            for i in range(args.records):
                record["prompt_id"], record["id"] = f"p{i}", f"p{i}#{record['sample']}"
                f.write(json.dumps(record) + "\n")
        read_trajectories(path)  # imports and warm-up
        times = []
        for _ in range(args.repeats):
            t = time.process_time()
            read_trajectories(path)
            times.append(time.process_time() - t)
    print(f"{args.records} records: {min(times):.3f} s CPU (best of {args.repeats})")


if __name__ == "__main__":
    main()

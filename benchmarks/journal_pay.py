"""What journalling costs: a round's request paid through the label journal, asked one
molecule a call (as the DFT table and xTB are) and a forward pass of 64 a call (as the
network labellers are), the QM9 table answering.

    python benchmarks/journal_pay.py [--labels 500] [--repeats 3]

Prints milliseconds a label for each; every call appends an ``asked`` and a ``labels``
record and fsyncs each (so the figure depends on the disk), and the load average.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from al.data.load import load_qm9
from al.loop.journal import LabelJournal, pay
from al.oracles import NETWORK_CHUNK, build_oracle


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--labels", type=int, default=500)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    data = load_qm9()
    oracle = build_oracle("dft", data=data)
    rng = np.random.default_rng(0)
    print(f"load average (1 min) before: {os.getloadavg()[0]:.2f}")
    for chunk in (1, NETWORK_CHUNK):
        oracle.journal_chunk = chunk  # type: ignore[misc]
        times = []
        for _ in range(args.repeats):
            index = rng.choice(data.qm9_index.numpy(), args.labels, replace=False)
            request = pd.DataFrame({"qm9_index": index, "fidelity": 0})
            with tempfile.TemporaryDirectory() as folder:
                journal = LabelJournal(Path(folder) / "journal.jsonl")
                t0 = time.perf_counter()
                pay(journal, 0, request, [oracle], lambda: None)
                times.append((time.perf_counter() - t0) / args.labels * 1e3)
        print(f"{chunk:>3} a call: {np.median(times):.2f} ms a label (median of "
              f"{args.repeats}: {', '.join(f'{t:.2f}' for t in times)})")  # fmt: skip
    print(f"load average (1 min) after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

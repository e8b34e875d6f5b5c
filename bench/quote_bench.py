"""Wall time of `qdibkr quote AAPL` in a fresh process, against a bare ib_insync script.

Both run as new processes against the same simulated gateway (itself started
as `qdibkr sim`), alternating so that machine noise hits both alike. The bare
script is what a user would write by hand: import ib_insync, connect, qualify,
take a snapshot, print it. Target: ratio (qdibkr / bare) <= 1.3.

    python bench/quote_bench.py [--rounds 15]

Prints the figures and writes them to bench/results/quote_bench.json.
"""

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "quote_bench.json"
BARE = """
import sys
from ib_insync import IB, Stock
ib = IB()
ib.connect("127.0.0.1", int(sys.argv[1]), clientId=1)
contract = Stock("AAPL", "SMART", "USD")
ib.qualifyContracts(contract)
[t] = ib.reqTickers(contract)
print("AAPL", t.bid, t.ask, t.last, t.close, t.volume, t.time)
ib.disconnect()
"""


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - started


def main(rounds: int) -> dict:
    qdibkr = shutil.which("qdibkr") or sys.exit("install qdibkr first: pip install -e .")
    sim = subprocess.Popen([qdibkr, "sim", "--port", "0"], stdout=subprocess.PIPE, text=True)
    try:
        port = sim.stdout.readline().split("127.0.0.1:")[1].split(",")[0]
        ours, bare = [], []
        for _ in range(rounds):
            ours.append(timed([qdibkr, "quote", "AAPL", "--port", port]))
            bare.append(timed([sys.executable, "-c", BARE, port]))
    finally:
        sim.terminate()
        sim.wait()
    return {"rounds": rounds,
            "qdibkr_quote_s_median": statistics.median(ours),
            "bare_ib_insync_s_median": statistics.median(bare),
            "ratio": statistics.median(ours) / statistics.median(bare)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    figures = main(parser.parse_args().rounds)
    for name, value in figures.items():
        print(f"{name:28s} {value:10.3f}" if isinstance(value, float) else f"{name:28s} {value:10d}")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2))
    print(f"written to {RESULTS}")

"""Write the example device and availability traces of `clock=trace` (conf/clock/traces/).

    python experiments/async/make_trace.py [--clients 30] [--seed 0] [--out conf/clock/traces]

A small, generated stand-in for FedScale's traces, in the CSV shape fedtorch reads
(`fedtorch.clock.read_devices`, `read_availability`):

- devices.csv: client,speed,download,upload: speeds log-normal around 2 local steps per second
  (sigma 1), download around 10 Mbit/s and upload around 2 Mbit/s (sigma 0.5), in bytes per second;
- availability.csv: client,start,end: each client is online in 1 to 3 windows a day, each 2 to 8
  hours long, starting at a time of day spread over the clients as if over time zones; windows of
  one client may overlap (fedtorch merges them). With `clock.period=86400` the day repeats.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

DAY = 86400.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[2] / "conf/clock/traces")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "devices.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["client", "speed", "download", "upload"])
        for k in range(args.clients):
            speed = 2.0 * np.exp(rng.standard_normal())
            download = 1.25e6 * np.exp(0.5 * rng.standard_normal())
            upload = 2.5e5 * np.exp(0.5 * rng.standard_normal())
            writer.writerow([k, f"{speed:.4f}", f"{download:.0f}", f"{upload:.0f}"])
    with (args.out / "availability.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["client", "start", "end"])
        for k in range(args.clients):
            phase = DAY * k / args.clients
            for _ in range(int(rng.integers(1, 4))):
                start = (phase + rng.uniform(0, DAY / 2)) % DAY
                length = rng.uniform(2, 8) * 3600.0
                end = min(start + length, DAY)  # windows lie within one day (the period)
                writer.writerow([k, f"{start:.0f}", f"{end:.0f}"])


if __name__ == "__main__":
    main()

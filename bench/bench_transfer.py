"""How close do fastps's pipelined GPU push and pull come to a plain pinned cudaMemcpy of the
same bytes, and how much of the D2H copy hides behind the store's apply?

On a machine with a CUDA GPU, for each size n (--sizes, log2 of float32 elements), mode
(--modes) and chunk size (--chunks, KiB), four operations are timed in alternation, round by
round (bench/_harness.py's measure_interleaved, so drift cancels in the per-round ratios):

* ``d2h``  the baseline: torch's copy of the n-element CUDA tensor into a pinned host tensor
  (cudaMemcpyAsync from pinned memory, then a stream synchronize);
* ``h2d``  the baseline the other way;
* ``push`` fastps: ``handle.push(cuda_grad)``, chunked D2H into pinned staging on the handle's
  copy stream, the CPU applying chunk i while chunk i+1 is in flight; returns when applied;
* ``pull`` fastps: ``handle.pull(cuda_out)``, chunked H2D straight from (pinned) store memory;
* ``apply`` the host part alone: ``handle.push`` of the same gradient already in host memory.

Each record carries ``gb_per_s`` (4n bytes over the median time), ``vs_copy`` (the median of
per-round ratios baseline time / fastps time: 1.0 = as fast as a bare pinned copy of the same
bytes; the issue's target is >= 0.9 for pull at large n) and, for push, ``hidden`` = (t_d2h +
t_apply - t_push) / t_d2h, the share of the D2H copy time hidden behind the apply (1 = all of
it, 0 = none: copy and apply ran back to back). With --half, pushes and pulls are repeated with
``transfer_dtype="bfloat16"`` (half the PCIe bytes; gb_per_s still counts float32 bytes).
When nvidia-ml-py (pynvml) is installed, each record's ``nvml`` has the PCIe generation and
width and the TX/RX throughput NVML reports; without it that field is null.

Without a GPU it runs the same pipeline on the CPU copy engine (a copy thread; host memory on
both sides) with ``fastps.probe.copy`` (memcpy of the same bytes) as the baseline, and says so in
every record (``engine: "cpu"``): the figures then describe the pipeline's overhead, not PCIe.

Output: JSON lines on stdout (and --out), then a '#'-prefixed table; progress on stderr.

    python bench/bench_transfer.py            # about 2 minutes on a GPU machine
    python bench/bench_transfer.py --quick
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from typing import IO, Any

import _harness as H
import numpy as np

import fastps
from fastps import probe

BENCH = "transfer"
TARGET = 0.9  # fastps / plain pinned copy, large transfers
TARGET_FROM = 1 << 24


def _nvml() -> dict[str, Any] | None:
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(0)
        kb = pynvml.NVML_PCIE_UTIL_TX_BYTES, pynvml.NVML_PCIE_UTIL_RX_BYTES
        return {
            "pcie_gen": pynvml.nvmlDeviceGetCurrPcieLinkGeneration(h),
            "pcie_width": pynvml.nvmlDeviceGetCurrPcieLinkWidth(h),
            "tx_kb_per_s": pynvml.nvmlDeviceGetPcieThroughput(h, kb[0]),
            "rx_kb_per_s": pynvml.nvmlDeviceGetPcieThroughput(h, kb[1]),
        }
    except Exception as e:  # noqa: BLE001 - telemetry is optional; say why it is missing
        return {"error": str(e)}


class Cell:
    """The buffers and callables of one (n, mode, chunk) cell, on a GPU or on the CPU engine."""

    def __init__(self, n: int, mode: str, chunk: int, gpu: bool, half: bool) -> None:
        self.n, self.gpu = n, gpu
        self.store = fastps.Store(n, mode=mode, lr=1e-6, shards=4, nan_guard="off")
        self.h = self.store.learner()
        self.plain = self.store.learner()
        engine = "auto" if gpu else "cpu"
        self.h.configure_transfer(engine=engine, chunk_bytes=chunk,
                                  transfer_dtype="bfloat16" if half else None)  # fmt: skip
        rng = np.random.default_rng(0)
        self.host_g = rng.standard_normal(n).astype(np.float32)
        self.host_out = np.empty(n, np.float32)
        if gpu:
            import torch

            self.torch = torch
            self.dev_g = torch.from_numpy(self.host_g).cuda()
            self.dev_out = torch.empty(n, device="cuda")
            self.pinned = torch.empty(n, pin_memory=True)
        else:
            self.dev_g, self.dev_out = self.host_g.copy(), np.empty(n, np.float32)

    def fns(self) -> dict[str, Callable[[], object]]:
        if self.gpu:
            torch = self.torch

            def d2h() -> None:
                self.pinned.copy_(self.dev_g, non_blocking=True)
                torch.cuda.current_stream().synchronize()

            def h2d() -> None:
                self.dev_out.copy_(self.pinned, non_blocking=True)
                torch.cuda.current_stream().synchronize()

            def pull() -> None:
                self.h.pull(self.dev_out)
                torch.cuda.current_stream().synchronize()
        else:

            def d2h() -> None:
                probe.copy(self.host_out, self.host_g)

            h2d = d2h

            def pull() -> None:
                self.h.pull(self.dev_out)

        return {
            "d2h": d2h, "h2d": h2d, "push": lambda: self.h.push(self.dev_g), "pull": pull,
            "apply": lambda: self.plain.push(self.host_g),
        }  # fmt: skip

    def close(self) -> None:
        self.h.close()
        self.plain.close()
        self.store.close()


def _ratio(num: H.Timing, den: H.Timing) -> float:
    return statistics.median(H.paired(num, den, lambda a, b: a / b))


def _hidden(t: dict[str, H.Timing]) -> float:
    vals = [(c + a - p) / c for c, a, p in zip(t["d2h"].samples, t["apply"].samples,
                                             t["push"].samples)]  # fmt: skip
    return statistics.median(vals)


def run(args: argparse.Namespace, out: list[IO[str]]) -> list[dict[str, Any]]:
    gpu = fastps.cuda_available()
    if not gpu:
        H.log("no CUDA GPU here: timing the same pipeline on the CPU copy engine (copy thread)")
    recs = []
    for log2 in args.sizes:
        n = 1 << log2
        for mode in args.modes:
            for kib in args.chunks:
                for half in (False, True) if args.half else (False,):
                    cell = Cell(n, mode, kib << 10, gpu, half)
                    try:
                        t = H.measure_interleaved(cell.fns(), warmup=2, repeats=args.repeats)
                    finally:
                        cell.close()
                    params = {"n": n, "mode": mode, "chunk_kib": kib,
                              "transfer_dtype": "bfloat16" if half else "float32"}  # fmt: skip
                    extra = {"engine": "cuda" if gpu else "cpu", "nvml": _nvml()}
                    for op, base in (("push", "d2h"), ("pull", "h2d")):
                        rec = H.record(BENCH, {**params, "op": op}, t[op], items_per_call=n,
                                       gb_per_s=4 * n / t[op].median_s / 1e9,
                                       baseline_gb_per_s=4 * n / t[base].median_s / 1e9,
                                       vs_copy=_ratio(t[base], t[op]),
                                       hidden=_hidden(t) if op == "push" else None,
                                       **extra)  # fmt: skip
                        H.emit(rec, out)
                        recs.append(rec)
                    H.log(f"n=2^{log2} {mode} chunk={kib} KiB half={half}: push "
                          f"{recs[-2]['vs_copy']:.2f}x copy, hidden {recs[-2]['hidden']:.2f}; "
                          f"pull {recs[-1]['vs_copy']:.2f}x copy")  # fmt: skip
    return recs


def table(recs: list[dict[str, Any]]) -> None:
    rows = [(r["params"]["op"], r["params"]["n"], r["params"]["mode"], r["params"]["chunk_kib"],
             r["params"]["transfer_dtype"], r["gb_per_s"], r["baseline_gb_per_s"], r["vs_copy"],
             r["hidden"]) for r in recs]  # fmt: skip
    engine = recs[0]["engine"] if recs else "?"
    H.print_table(("op", "n", "mode", "chunk KiB", "dtype", "GB/s", "copy GB/s", "vs copy",
                   "hidden"), rows,
                  title=f"fastps transfers vs a plain pinned copy of the same bytes "
                        f"(engine: {engine})")  # fmt: skip
    big = [r["vs_copy"] for r in recs if r["params"]["n"] >= TARGET_FROM
           and r["params"]["transfer_dtype"] == "float32"]  # fmt: skip
    if big and engine == "cuda":
        print(
            f"# target: >= {TARGET}x the plain copy for n >= 2^24; median {statistics.median(big):.2f}x"
        )
    elif engine == "cpu":
        print("# no GPU: CPU copy engine; these figures are the pipeline's own overhead, not PCIe")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=H.int_list, default=None, help="log2 of n (default 20,24,26)")
    p.add_argument("--modes", type=H.mode_list, default=["locked", "leashed"])
    p.add_argument("--chunks", type=H.int_list, default=None,
                   help="chunk sizes in KiB (default 256,1024,4096,16384)")  # fmt: skip
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--half", action="store_true", help="also bfloat16 transfers")
    p.add_argument("--quick", action="store_true", help="n = 2^20, 2^22; chunks 1024, 4096")
    p.add_argument("--out", type=argparse.FileType("w"), default=None, help="also write JSON here")
    args = p.parse_args(argv)
    if args.sizes is None:
        args.sizes = [20, 22] if args.quick else [20, 24, 26]
    if args.chunks is None:
        args.chunks = [1024, 4096] if args.quick else [256, 1024, 4096, 16384]
    if args.quick:
        args.repeats = min(args.repeats, 5)
    recs = run(args, [args.out] if args.out else [])
    table(recs)


if __name__ == "__main__":
    sys.exit(main())

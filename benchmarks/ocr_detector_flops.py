"""Why easyocr cannot read 6 images/s here: CRAFT's arithmetic on a 256 px image against what this
CPU's fp32 units deliver. Counts the detector's FLOPs (torch's FlopCounterMode), times it at one
thread in the scorer's layout (channels-last) and as an int8 copy (`ocr_settings.py`'s; calibrated on
random inputs: timing only), and times a 2048² fp32 matmul at one thread as the attainable rate.

    OMP_NUM_THREADS=1 python benchmarks/ocr_detector_flops.py
"""

from __future__ import annotations

import time
import warnings

import torch
from torch.utils.flop_counter import FlopCounterMode

from nbeval.scorers.ocr import EasyOCRScorer
from ocr_settings import int8_copy


def seconds_per_call(fn, repeats: int) -> float:
    fn(), fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    warnings.filterwarnings("ignore", message=".*pin_memory.*")
    torch.set_num_threads(1)
    detector = EasyOCRScorer(threads=1).reader.detector.eval()
    x = torch.randn(1, 3, 256, 256).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        counter = FlopCounterMode(display=False)
        with counter:
            detector(x)
        flops = counter.get_total_flops()
        per_image = seconds_per_call(lambda: detector(x), 10)
        int8 = int8_copy(detector, [torch.randn(1, 3, 256, 256) for _ in range(4)])
        per_image_int8 = seconds_per_call(lambda: int8(x.contiguous()), 10)
        a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
        matmul = 2 * 2048**3 / seconds_per_call(lambda: a @ b, 5)
    print(f"CRAFT on 256x256: {flops / 1e9:.1f} GFLOP; {per_image:.3f} s an image at one thread = {flops / per_image / 1e9:.0f} GFLOP/s")
    print(f"the same detector in int8 (x86, no VNNI on AVX2): {per_image_int8:.3f} s an image at one thread")
    print(f"fp32 matmul 2048x2048 at one thread: {matmul / 1e9:.0f} GFLOP/s")
    print(f"6 images/s on 2 cores needs {3 * flops / 1e9:.0f} GFLOP/s a core for the detector alone")


if __name__ == "__main__":
    main()

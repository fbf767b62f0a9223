"""Embed one very long sentence and report time and peak memory.

    python benchmarks/long_input.py MODEL_DIR [--tokens 20000] [--threads 2]

MODEL_DIR holds options.json + weights.hdf5. The sentence is built from a fixed word
list, so runs are comparable. Prints one JSON line: tokens, seconds, peak RSS of the
process, the RSS before embedding, and the memory an unchunked char CNN would need for
its convolution outputs alone. (That chunking changes no result is a unit test.)
"""

from __future__ import annotations

import argparse
import json
import re
import time

import torch

import elmo

WORDS = (
    "the quick brown fox jumps over the lazy dog while seventeen Zürich bankers , naïve and tired ,"
    " count 3.14159 coins in a very long sentence that never seems to end ."
).split(" ")


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(key + r":\s+(\d+) kB", f.read()).group(1)) * 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--tokens", type=int, default=20000)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    m = elmo.load(a.model)
    cfg = m.config.char_cnn
    sentence = [WORDS[i % len(WORDS)] for i in range(a.tokens)]
    conv_floats = sum(n * (cfg.max_characters_per_token - w + 1) for w, n in cfg.filters)
    unchunked = (a.tokens + 2) * conv_floats * 4
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status("VmRSS")
    start = time.perf_counter()
    with torch.no_grad():
        out = m(tokens=[sentence])
    seconds = time.perf_counter() - start
    result = {
        "tokens": a.tokens,
        "seconds": round(seconds, 1),
        "peak_rss_mb": round(_status("VmHWM") / 2**20, 1),
        "rss_before_mb": round(before / 2**20, 1),
        "unchunked_char_cnn_conv_outputs_mb": round(unchunked / 2**20, 1),
        "output_shape": list(out["elmo"].shape),
        "finite": bool(torch.isfinite(out["elmo"]).all()),
        "threads": a.threads,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()

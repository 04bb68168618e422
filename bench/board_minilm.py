#!/usr/bin/env python3
"""all-MiniLM-L6-v2 on the simulated ULX3S SDRAM board: one sentence, bit-exact, cycles, DRAM
bandwidth, sentences/s.

    .venv/bin/python bench/board_minilm.py "A man is riding a horse."

What runs: the whole ``ulx3s-85f-sdram`` board top (:class:`boards.top.UARTCoreTop`: UART
bridge, image store and DRAM reader on LiteDRAM's ``--sim`` core, i.e. the real controller on
LiteDRAM's SDRAM model, and the ``ulx3s-minilm`` encoder core) in Verilator under cocotb
(:mod:`sim.sdram_top`, the bench ``sim/tb_board.py``). The parameter image of all-MiniLM-L6-v2
quantized for ``ulx3s-minilm`` (``bertcore quantize --gelu-bits 8``, cached in
``build/board_minilm/``; 11 MB) is preloaded into the SDRAM model's bank arrays
(``GeneratedCore.write_preload``, ``$readmemh``): 11 MB do not go through a simulated UART. The
host code of :mod:`bertcore.board` then talks to the board over the bit-level simulated UART
(4 clock cycles per bit) exactly as ``bertcore board load --verify-only`` and ``board run``
do: a verify-only load (the store reads the whole image back from the SDRAM and compares its
CRC-32 with the host's), then ``RUN`` and the sentence's activations (the host tokenizes and
embeds), the output read back with ``READ``.

Checked: the core's int8 output equals the integer reference (``IntBert.forward_ids``) and the
mean-pooled sentence embedding is bit-identical to ``bertcore embed --backend int`` on the same
quantized model; otherwise ``bit-exact=no`` and exit code 1.

Printed: the core cycles of the run, the span of the image stream and the DRAM bandwidth
achieved on ``s_axis_param`` (image bytes / stream span), LiteDRAM's refreshes during the run,
the verify's cycles, and on the last line ``board_minilm: bit-exact=yes|no sentences_per_s=N.N``.

**What the cycle count spans**: the core's own ``cycles`` status (read with STATUS after the
run), from the first image word the core takes (the store starts streaming on ``RUN``) to the
last output word taken by the bridge. It therefore includes the time the activations take to
arrive over the simulated UART (the core waits for them after the image header; 40 cycles a
byte here, L x 384 bytes) and the output's way out (``READ`` polls spaced by
:data:`POLL_GAP` cycles, 40 cycles a byte); at the board's 1 Mbaud both would take about 19x
longer, so this is the rate of the core and the SDRAM with a fast host link, not of the
1 Mbaud UART. sentences/s = the core clock the board runs this preset at (50 MHz:
``board_spec(BOARD, config).clock``, ``BoardSpec.preset_builds``) / these cycles, for this
sentence's length.

Bad input (empty text, more than the preset's ``max_seq`` tokens): one line on stderr, exit code 2.
The first run quantizes the model (about 30 s, cached) and builds the board top in Verilator
(cached in ``build/sim/``): measured 2 min of Verilog generation and 2.5 min of Verilator
build on the shared 2-core machine; a 12-token sentence then takes about 6.6 min of
simulation (12.3 million cycles, the verify-only load's read-back of the 11 MB included).
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BOARD = "ulx3s-85f-sdram"
PRESET = "ulx3s-minilm"
CACHE = ROOT / "build" / "board_minilm"
#: Cycles the host waits before each STATUS / READ poll: about what a poll takes at the
#: board's 1 Mbaud (31 bytes of STATUS frame and reply = 310 us = 23 000 cycles at 75 MHz).
POLL_GAP = 20000


def fail(message, code=2):
    print(f"board_minilm: error: {message}", file=sys.stderr)
    sys.exit(code)


def quantized_model(path):
    """The cached artifact, quantized as ``bertcore quantize --gelu-bits 8`` (the preset's
    ``gelu_bits``) on the built-in calibration set."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        print(f"quantizing all-MiniLM-L6-v2 for {PRESET} -> {path}", flush=True)
        subprocess.run([sys.executable, "-m", "bertcore.cli", "quantize", "--gelu-bits", "8",
                        "-o", str(path)], check=True, cwd=ROOT)
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("text", help="one sentence (at most the preset's max_seq tokens)")
    ap.add_argument("--quantized", type=Path, default=CACHE / "minilm-gelu8.safetensors",
                    help="the quantized model (made with bertcore quantize --gelu-bits 8 if "
                    "missing)")
    args = ap.parse_args()
    if not args.text.strip():
        fail("empty text")

    from bertcore.boards.top import board_spec
    from bertcore.config import preset
    config = preset(PRESET)
    spec = board_spec(BOARD, config)        # the clock the board runs this preset at
    from bertcore.quant.artifact import load_artifact
    qm = load_artifact(quantized_model(args.quantized))
    ids, truncated = qm.tokenizer.encode_checked(args.text)
    if truncated or len(ids) > config.max_seq:
        more = "more than " if truncated else ""
        fail(f"the text has {more}{len(ids)} tokens; {PRESET} holds at most {config.max_seq}")

    import numpy as np
    import torch

    from bertcore.board import image_fingerprint
    from bertcore.core.image import (
        check_model, pack_activations, pack_parameter_image, unpack_activations,
    )
    from bertcore.embed import embed_texts
    from bertcore.quant.floatref import mean_pool
    from sim.sdram_top import run_sdram_top
    check_model(qm, config)
    length = len(ids)
    x = qm.embed_int(ids)
    ref_out = qm.forward_ids(ids)
    image = pack_parameter_image(qm, config)
    fingerprint = image_fingerprint(image, config.bus_width)
    print(f"{PRESET}: {len(image)} image words ({4 * len(image) / 1e6:.2f} MB, fingerprint "
          f"{fingerprint:08x}); {length} tokens", flush=True)
    runs = [{"length": length, "act": pack_activations(x, config),
             "out": pack_activations(ref_out, config)}]
    work = CACHE / f"run-{fingerprint:08x}"
    work.mkdir(parents=True, exist_ok=True)
    report = work / "report.json"
    if report.exists():
        report.unlink()
    t0 = time.time()
    run_sdram_top(config, image, runs, report=report, name="board_sdram_minilm",
                  preload_dir=work / "preload", polls=200000, poll_gap=POLL_GAP, check=False,
                  waves_on_failure=False)
    wall = time.time() - t0
    result = json.loads(report.read_text())

    out_words = result["outputs"][0]
    exact_words = out_words == runs[0]["out"]
    out = unpack_activations(out_words, length, config) if isinstance(out_words, list) else None
    emb_board = None if out is None else mean_pool(qm.dequantize(out)).numpy()
    emb_int = embed_texts([args.text], backend="int", quantized=str(args.quantized))[0]
    exact = bool(exact_words and out is not None and torch.equal(out, ref_out)
                 and np.array_equal(emb_board.astype(np.float32), emb_int.astype(np.float32)))

    cycles = result["cycles"][0]
    start, end = result["stream_spans"][0]
    span = end - start
    nbytes = 4 * len(image)
    print(f"simulation: {wall:.0f} s wall (build included if not cached), "
          f"{result['sim_ms']:.2f} ms simulated")
    print(f"verify-only load: {int(result['load_cycles'])} cycles (the store reads {nbytes} "
          "bytes back and checks the CRC-32)")
    print(f"core cycles of the run: {cycles} ({length} tokens)")
    print(f"image stream: {nbytes} bytes in {int(span)} cycles = {nbytes / span:.3f} "
          f"bytes/cycle on s_axis_param (the 16-bit SDR peak is 2); "
          f"{result['refreshes'][0]} refreshes "
          f"during the run")
    print(f"link: {result['stats']}")
    rate = spec.clock / cycles
    print(f"board_minilm: bit-exact={'yes' if exact else 'no'} sentences_per_s={rate:.1f}")
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())

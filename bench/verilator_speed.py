#!/usr/bin/env python3
"""Verilator speed of the simulated encoder core: the model alone, and through the package.

Builds of ``bertcore_sim_top`` (:data:`bertcore.rtlsim.REPLAY_TOP` around the core of
``--preset``), all with the package's Verilator flags:

* ``model``: a C++ main clocks the Verilated model and streams one activation packet per run (no
  VPI, no Python): the ceiling of any harness. The build goes to ``--work`` (not cached); its
  options can be varied (``--opt-fast``, arguments after ``--``).
* ``direct``: the package's path for runs without stalls, :class:`bertcore.rtlsim.CoreSimulator`
  with its C++ main (:mod:`bertcore.rtlsim_main`), as ``bertcore embed --backend rtl`` and the
  benches use it (cached in ``rtlsim/`` of :func:`bertcore.cache.cache_dir`).
* ``cocotb``: the same through the cocotb driver (:mod:`bertcore.rtlsim_tb`), which the tests
  use for random backpressure (cached too).

Each checks the outputs against the integer reference and prints the build time and cycles/s;
the last line is ``cycles_per_s=N`` of the package's path (``direct``, else the last measured).
Parameters are random (:func:`bertcore.rtlsim.random_model`); the speed does not depend on them.

    .venv/bin/python bench/verilator_speed.py --preset minilm --seq 9
    .venv/bin/python bench/verilator_speed.py --preset minilm --only direct
    .venv/bin/python bench/verilator_speed.py --preset tiny --only model --opt-fast=-Os -- -O0
"""

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bertcore.config import preset  # noqa: E402
from bertcore.toolchain import (  # noqa: E402
    VERILATOR_BUILD_ARGS, VERILATOR_MAKE_VARS, VERILATOR_SIM_MAKE_VARS, ensure_verilator_env,
)

# The C++ main of the ``model`` build: reset, then per run pulse param_go, stream the packet,
# collect the output packet, wait for busy to fall; cycles/s over the runs (start-up excluded).
MAIN_CPP = r"""
#include "Vtop.h"
#include "verilated.h"
#include <chrono>
#include <cstdint>
#include <ctime>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

typedef std::vector<uint32_t> Word;  // 32-bit limbs, least significant first
static std::vector<Word> read_hex(const std::string& path) {
    std::vector<Word> words;
    std::ifstream f(path);
    std::string s;
    while (f >> s) {
        Word w(BUSW, 0);
        for (int i = 0; i < BUSW && 8 * i < (int)s.size(); i++) {
            int end = (int)s.size() - 8 * i, beg = end > 8 ? end - 8 : 0;
            w[i] = (uint32_t)std::stoul(s.substr(beg, end - beg), nullptr, 16);
        }
        words.push_back(w);
    }
    return words;
}
#if BUSW == 1
static void put(Vtop* t, const Word& w) { t->s_axis_act_tdata = w[0]; }
static Word get(Vtop* t) { return Word{t->m_axis_act_tdata}; }
#else
static void put(Vtop* t, const Word& w) {
    for (int i = 0; i < BUSW; i++) t->s_axis_act_tdata[i] = w[i];
}
static Word get(Vtop* t) {
    Word w(BUSW);
    for (int i = 0; i < BUSW; i++) w[i] = t->m_axis_act_tdata[i];
    return w;
}
#endif
static std::string plusarg(VerilatedContext* ctx, const char* name) {
    std::string arg = ctx->commandArgsPlusMatch(name);  // "+name=value" or ""
    return arg.empty() ? "" : arg.substr(std::string(name).size() + 1);
}

int main(int argc, char** argv) {
    VerilatedContext* ctx = new VerilatedContext;
    ctx->commandArgs(argc, argv);
    std::vector<Word> acts = read_hex(plusarg(ctx, "act="));
    std::vector<Word> expect = read_hex(plusarg(ctx, "exp="));
    int runs = std::stoi(plusarg(ctx, "runs="));
    auto t0 = std::chrono::steady_clock::now();
    Vtop* top = new Vtop{ctx};
    uint64_t cycles = 0;
    auto tick = [&]() { top->clk = 1; top->eval(); top->clk = 0; top->eval(); cycles++; };
    top->clk = 0; top->rst = 1; top->eval();
    for (int i = 0; i < 3; i++) tick();
    top->rst = 0; tick();
    auto t1 = std::chrono::steady_clock::now();
    std::clock_t k1 = std::clock();
    uint64_t c0 = cycles;
    int bad = 0;
    for (int r = 0; r < runs; r++) {
        top->param_go = 1; tick(); top->param_go = 0;
        top->m_axis_act_tready = 1;
        size_t sent = 0;
        bool last = false;
        std::vector<Word> out;
        while (!last || top->busy) {
            top->s_axis_act_tvalid = sent < acts.size();
            if (sent < acts.size()) {
                put(top, acts[sent]);
                top->s_axis_act_tlast = sent + 1 == acts.size();
            }
            top->eval();
            bool accepted = top->s_axis_act_tvalid && top->s_axis_act_tready;
            if (top->m_axis_act_tvalid && !last) {
                out.push_back(get(top));
                last = top->m_axis_act_tlast;
            }
            tick();
            sent += accepted;
            if (cycles > 2000000000ULL) { printf("timeout\n"); return 1; }
        }
        bad += out != expect || top->error;
        printf("run %d: %zu beats, bit-exact %s, core cycles %u\n", r, out.size(),
               out == expect ? "yes" : "NO", top->cycles);
    }
    double startup = std::chrono::duration<double>(t1 - t0).count();
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
    double cpu = double(std::clock() - k1) / CLOCKS_PER_SEC;
    printf("start-up %.2f s; %llu cycles in %.2f s wall = %.0f cycles/s, %.2f s CPU = %.0f "
           "cycles/s\n", startup, (unsigned long long)(cycles - c0), s, (cycles - c0) / s, cpu,
           (cycles - c0) / cpu);
    top->final();
    delete top;
    return bad ? 1 : 0;
}
"""


def _run(cmd, log, **kw):
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, **kw)
    if proc.returncode:
        raise SystemExit(f"failed ({log}): {' '.join(map(str, cmd))}")


def model_speed(cfg, core_v, wrapper_v, depth, files, work, extra_args, opt_fast, runs):
    """Build the ``model`` harness in ``work``; return (verilate s, C++ s, run output)."""
    verilator = ensure_verilator_env()
    work.mkdir(parents=True, exist_ok=True)
    (work / "bertcore_encoder.v").write_text(core_v)
    (work / "bertcore_sim_top.v").write_text(wrapper_v)
    (work / "main.cpp").write_text(MAIN_CPP)
    obj = work / "obj"
    subprocess.run(["rm", "-rf", str(obj)], check=True)
    t0 = time.time()
    _run([verilator, "--cc", "--exe", "-Mdir", str(obj), "--top-module", "bertcore_sim_top",
          "--prefix", "Vtop", "-o", "sim", *VERILATOR_BUILD_ARGS, *extra_args,
          f"-GBUS={cfg.bus_width}", f"-GDEPTH={depth}", "-CFLAGS", f"-DBUSW={cfg.bus_width // 32}",
          *(str(work / name) for name in ("main.cpp", "bertcore_encoder.v", "bertcore_sim_top.v"))],
         work / "verilate.log")
    t1 = time.time()
    make_vars = [*VERILATOR_MAKE_VARS, *VERILATOR_SIM_MAKE_VARS]
    if opt_fast is not None:
        make_vars = [*(v for v in make_vars if not v.startswith("OPT_FAST=")),
                     f"OPT_FAST={opt_fast}"]
    _run(["make", "-j2", "-C", str(obj), "-f", "Vtop.mk", *make_vars], work / "make.log")
    t2 = time.time()
    out = subprocess.run([str(obj / "sim"), f"+params={files['params']}", f"+act={files['act']}",
                          f"+exp={files['exp']}", f"+runs={runs}"],
                         capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"the model run failed:\n{out.stdout}{out.stderr}")
    return t1 - t0, t2 - t1, out.stdout.strip()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="minilm")
    ap.add_argument("--seq", type=int, default=9, help="tokens per run")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--only", choices=("model", "direct", "cocotb"))
    ap.add_argument("--opt-fast", help="C++ optimization of the model build's hot code "
                    "(make OPT_FAST; default: the package's)")
    ap.add_argument("--work", type=Path, default=Path("build/verilator_speed"))
    ap.add_argument("verilator_args", nargs="*", help="after --: more Verilator arguments")
    args = ap.parse_args()

    import torch
    from amaranth.back import verilog
    from bertcore.core.encoder import EncoderTop
    from bertcore.core.image import (
        image_beats, image_to_hex, pack_activations, pack_parameter_image,
    )
    from bertcore.rtlsim import check_core, random_model, replay_top

    cfg = preset(args.preset)
    t0 = time.time()
    model = random_model(cfg)
    print(f"random {args.preset} model in {time.time() - t0:.1f} s", flush=True)
    model_figure = None
    if args.only in (None, "model"):
        t0 = time.time()
        top = EncoderTop(cfg)
        core_v = verilog.convert(top, name="bertcore_encoder", emit_src=False)
        print(f"Verilog generation {time.time() - t0:.1f} s", flush=True)
        work = args.work / args.preset
        work.mkdir(parents=True, exist_ok=True)
        x = torch.randint(-128, 128, (args.seq, cfg.hidden),
                          generator=torch.Generator().manual_seed(1))
        files = {"params": work / "params.hex", "act": work / "act.hex", "exp": work / "exp.hex"}
        digits = cfg.bus_width // 4
        files["params"].write_text(image_to_hex(pack_parameter_image(model, cfg), cfg))
        files["act"].write_text("".join(f"{w:0{digits}x}\n" for w in pack_activations(x, cfg)))
        files["exp"].write_text("".join(f"{w:0{digits}x}\n"
                                        for w in pack_activations(model.encode_int(x), cfg)))
        vl_s, cc_s, out = model_speed(cfg, core_v, replay_top(top), image_beats(cfg), files, work,
                                      args.verilator_args, args.opt_fast, args.runs)
        print(f"model: Verilator {vl_s:.0f} s + C++ {cc_s:.0f} s = build {vl_s + cc_s:.0f} s")
        print("model: " + out.replace("\n", "\nmodel: "), flush=True)
        found = re.findall(r"CPU = (\d+) cycles/s", out)
        model_figure = float(found[-1]) if found else None
    figure = None
    for harness in ("direct", "cocotb"):
        if args.only not in (None, harness):
            continue
        t0 = time.time()
        ok, rows, res = check_core(cfg, model, [args.seq] * args.runs, harness=harness,
                                   progress=lambda m: print(f"[{time.time() - t0:7.1f} s] {m}",
                                                            flush=True))
        for seq, same, cycles in rows:
            print(f"{harness}: {seq} tokens, bit-exact {'yes' if same else 'NO'}, "
                  f"core cycles {cycles}")
        n = res.total_cycles
        print(f"{harness}: build {res.build_s:.0f} s (cached afterwards); whole simulation "
              f"{res.sim_s:.2f} s (start-up and $readmemh included) = {n / res.sim_s:.0f} "
              "cycles/s")
        print(f"{harness}: runs {n} cycles in {res.run_s:.2f} s wall = {n / res.run_s:.0f} "
              f"cycles/s, {res.run_cpu_s:.2f} s CPU = {n / res.run_cpu_s:.0f} cycles/s",
              flush=True)
        if not ok:
            return 1
        figure = figure or n / res.run_cpu_s
    figure = figure or model_figure
    if figure is not None:
        print(f"cycles_per_s={figure:.0f}")
    return 0

if __name__ == "__main__":
    sys.exit(main())

"""The C++ main of :mod:`bertcore.rtlsim`'s direct Verilator runs (no cocotb, no VPI).

``bertcore embed --backend rtl`` and the benches run long, unstalled simulations; there a cocotb
harness costs about 1.2 us per cycle in its GPI clock and VPI calls, a fifth of the ``minilm``
model's own cycle (docs/core.md, "MiniLM through the simulated core"). This main clocks the
Verilated :data:`bertcore.rtlsim.REPLAY_TOP` directly and follows the protocol of the cocotb
driver (:mod:`bertcore.rtlsim_tb`) step for step, so both give the same outputs and counters for
the same job (``tests/test_rtlsim.py`` checks that): reset for three cycles, then per run a
``param_go`` pulse (the wrapper replays the image), the segment table (``tuser``) and the
activation packet (``tlast`` on its last word) offered back to back, the output packet taken
with ``tready`` high (a ``tuser`` beat is a failure packet; its word is the cause code), then
wait for ``busy`` to fall and one more cycle before the counters are read.

Runs with random stalls or waveforms stay on cocotb, which the tests use for backpressure.

The image goes into the top's ROM from a binary file (``+params_bin=FILE``,
:func:`bertcore.rtlsim.image_file`) before the first evaluation; a file that does not fit the
ROM ends the harness with exit code 2 and one line on stderr, before any cycle.

The job is a text file (``+job=FILE``)::

    runs N
    run ROWS TABLE_WORDS ACT_WORDS OUT_BEATS MAX_CYCLES
    <TABLE_WORDS + ACT_WORDS hex words, one per line>
    ...

and the result a JSON file (``+result=FILE``) in the form :class:`bertcore.rtlsim.SimResult`
reads. A run that exceeds ``MAX_CYCLES`` or an output packet longer than ``4 * OUT_BEATS + 4``
beats ends the simulation with a ``failure``.
"""

__all__ = ["HARNESS_CPP", "harness_source", "write_job"]

#: The C++ main; ``@EXTRA@`` takes one line per further output of the core (its counters),
#: filled in by :func:`harness_source`.
HARNESS_CPP = r"""// bertcore: direct Verilator harness of bertcore_sim_top (bertcore.rtlsim_main)
#include "Vtop.h"
#include "Vtop_bertcore_sim_top.h"  // the ROM, public in the top (/*verilator public*/)
#include "verilated.h"
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

typedef std::vector<uint32_t> Word;  // 32-bit limbs, least significant first

static Word parse_hex(const std::string& s) {
    Word w;
    for (int end = (int)s.size(); end > 0; end -= 8) {
        int beg = end > 8 ? end - 8 : 0;
        w.push_back((uint32_t)std::stoul(s.substr(beg, end - beg), nullptr, 16));
    }
    return w;
}
static std::string hex(const Word& w) {
    std::string s;
    char buf[16];
    bool lead = true;
    for (int i = (int)w.size() - 1; i >= 0; i--) {
        if (lead && w[i] == 0 && i > 0) continue;
        snprintf(buf, sizeof buf, lead ? "%x" : "%08x", w[i]);
        s += buf;
        lead = false;
    }
    return s.empty() ? "0" : s;
}
static uint32_t limb(const Word& w, size_t i) { return i < w.size() ? w[i] : 0; }

// Ports up to 64 bits are integers, wider ones VlWide arrays of 32-bit words.
template <typename T> static void put(T& port, const Word& w) {
    port = (T)((uint64_t)limb(w, 0) | ((uint64_t)limb(w, 1) << 32));
}
template <std::size_t N> static void put(VlWide<N>& port, const Word& w) {
    for (std::size_t i = 0; i < N; i++) port[i] = limb(w, i);
}
template <typename T> static Word get(const T& port) {
    uint64_t v = (uint64_t)port;
    return Word{(uint32_t)v, (uint32_t)(v >> 32)};
}
template <std::size_t N> static Word get(const VlWide<N>& port) {
    Word w(N);
    for (std::size_t i = 0; i < N; i++) w[i] = port[i];
    return w;
}
static std::string plusarg(VerilatedContext* ctx, const char* name) {
    std::string arg = ctx->commandArgsPlusMatch(name);  // "+name=value" or ""
    return arg.empty() ? "" : arg.substr(std::string(name).size() + 1);
}
static std::string quote(const std::string& s) {
    std::string q = "\"";
    for (char c : s) q += (c == '"' || c == '\\') ? std::string("\\") + c : std::string(1, c);
    return q + "\"";
}

// The parameter image straight into the top's ROM (+params_bin=FILE, written by
// bertcore.rtlsim): "BCIM", then the 32-bit limbs per beat and the beats (little-endian
// 32-bit words), then each beat's limbs, least significant first. $readmemh of the same
// image as text took about a second for MiniLM's 680k beats (a character at a time).
template <typename T> static size_t limbs_of(const T&) { return sizeof(T) > 4 ? 2 : 1; }
template <std::size_t N> static size_t limbs_of(const VlWide<N>&) { return N; }
static std::string load_image(Vtop* top, const std::string& path) {
    auto& rom = top->bertcore_sim_top->rom;
    std::ifstream f(path, std::ios::binary);
    std::vector<char> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    if (!f.good() && !f.eof()) return "cannot read " + path;
    auto u32 = [&](size_t at) {
        uint32_t v = 0;
        for (int b = 3; b >= 0; b--) v = v << 8 | (uint8_t)bytes[at + b];
        return v;
    };
    if (bytes.size() < 12 || std::string(bytes.data(), 4) != "BCIM")
        return path + " is not a bertcore image file";
    size_t limbs = u32(4), beats = u32(8);
    if (limbs != limbs_of(rom[0]) || bytes.size() != 12 + 4 * limbs * beats)
        return path + ": its beats do not match the ROM's words";
    if (beats > rom.size())
        return "an image of " + std::to_string(beats) + " beats; the ROM holds "
               + std::to_string(rom.size());
    Word beat(limbs);
    for (size_t i = 0; i < beats; i++) {
        for (size_t l = 0; l < limbs; l++) beat[l] = u32(12 + 4 * (i * limbs + l));
        put(rom[i], beat);  // as the ports are written (an integer or a VlWide)
    }
    return "";
}

struct Run { unsigned long rows, table, act, out_beats; unsigned long long max_cycles;
             std::vector<Word> words; };

int main(int argc, char** argv) {
    VerilatedContext* ctx = new VerilatedContext;
    ctx->commandArgs(argc, argv);
    std::string job_path = plusarg(ctx, "job="), result_path = plusarg(ctx, "result=");
    std::ifstream job(job_path);
    std::string key;
    size_t nruns = 0;
    if (!(job >> key >> nruns) || key != "runs") {
        fprintf(stderr, "bertcore harness: bad job file %s\n", job_path.c_str());
        return 2;
    }
    std::vector<Run> runs(nruns);
    for (Run& r : runs) {
        if (!(job >> key >> r.rows >> r.table >> r.act >> r.out_beats >> r.max_cycles)
            || key != "run") {
            fprintf(stderr, "bertcore harness: bad job file %s\n", job_path.c_str());
            return 2;
        }
        std::string s;
        for (unsigned long i = 0; i < r.table + r.act && job >> s; i++)
            r.words.push_back(parse_hex(s));
        if (r.words.size() != r.table + r.act) {
            fprintf(stderr, "bertcore harness: short job file %s\n", job_path.c_str());
            return 2;
        }
    }

    Vtop* top = new Vtop{ctx};
    std::string image_path = plusarg(ctx, "params_bin=");
    if (!image_path.empty()) {
        std::string bad = load_image(top, image_path);
        if (!bad.empty()) {
            fprintf(stderr, "bertcore harness: %s\n", bad.c_str());
            return 2;
        }
    }
    unsigned long long cycle = 0;
    auto tick = [&]() { top->clk = 1; top->eval(); top->clk = 0; top->eval(); cycle++; };
    top->clk = 0;
    top->param_go = 0;
    top->s_axis_act_tvalid = 0;
    top->s_axis_act_tlast = 0;
    top->s_axis_act_tuser = 0;
    top->m_axis_act_tready = 0;
    top->rst = 1;
    top->eval();
    for (int i = 0; i < 3; i++) tick();
    top->rst = 0;
    tick();

    std::ostringstream res;
    std::string failure;
    res << "{\"runs\": [";
    for (size_t n = 0; n < runs.size() && failure.empty(); n++) {
        const Run& r = runs[n];
        auto wall0 = std::chrono::steady_clock::now();
        std::clock_t cpu0 = std::clock();
        unsigned long long start = cycle;
        top->param_go = 1;
        tick();
        top->param_go = 0;
        size_t sent = 0, total = r.words.size();
        bool got_last = false;
        uint64_t failed = 0;  // the cause code of a failure packet
        std::vector<Word> out;
        top->m_axis_act_tready = 1;
        while (!(got_last && sent == total)) {
            bool offer = sent < total;
            top->s_axis_act_tvalid = offer;
            if (offer) {
                put(top->s_axis_act_tdata, r.words[sent]);
                top->s_axis_act_tuser = sent < r.table;
                top->s_axis_act_tlast = sent + 1 == total;
            } else {
                top->s_axis_act_tuser = 0;
                top->s_axis_act_tlast = 0;
            }
            top->m_axis_act_tready = !got_last;
            top->eval();
            bool taken = offer && top->s_axis_act_tready;
            if (!got_last && top->m_axis_act_tvalid) {
                out.push_back(get(top->m_axis_act_tdata));
                if (top->m_axis_act_tuser)
                    failed = limb(out.back(), 0) | (uint64_t)limb(out.back(), 1) << 32;
                got_last = top->m_axis_act_tlast;
                if (!got_last && out.size() > 4 * r.out_beats + 4) {
                    failure = "output packet longer than " + std::to_string(4 * r.out_beats + 4)
                              + " beats";
                    break;
                }
            }
            tick();
            sent += taken;
            if (cycle - start > r.max_cycles) break;
        }
        top->s_axis_act_tvalid = 0;
        top->s_axis_act_tuser = 0;
        top->s_axis_act_tlast = 0;
        top->m_axis_act_tready = 0;
        while (failure.empty() && top->busy && cycle - start <= r.max_cycles) tick();
        if (failure.empty() && cycle - start > r.max_cycles)
            failure = "run " + std::to_string(n) + " did not end within "
                      + std::to_string(r.max_cycles) + " cycles";
        if (!failure.empty()) break;
        tick();
        double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - wall0)
                          .count();
        double cpu = double(std::clock() - cpu0) / CLOCKS_PER_SEC;
        res << (n ? ", " : "") << "{\"out\": [";
        for (size_t i = 0; i < out.size(); i++) res << (i ? ", " : "") << quote(hex(out[i]));
        res << "], \"cycles\": " << (unsigned long long)top->cycles
            << ", \"sim_cycles\": " << cycle - start
            << ", \"error\": " << (int)top->error << ", \"failed\": " << failed
            << ", \"wall_s\": " << wall << ", \"cpu_s\": " << cpu;
@EXTRA@
        res << "}";
    }
    res << "], \"failure\": " << (failure.empty() ? std::string("null") : quote(failure)) << "}\n";
    std::ofstream(result_path) << res.str();
    top->final();
    delete top;
    delete ctx;
    return 0;
}
"""


def harness_source(extra_outputs):
    """The C++ main for a core whose further outputs are ``extra_outputs`` (``(name, width)``
    pairs, each at most 64 bits wide): each goes into the result of every run."""
    from .checkpoint import BertError
    if any(width > 64 for _, width in extra_outputs):
        raise BertError("the direct harness reads outputs of at most 64 bits")
    lines = [f'        res << ", \\"{name}\\": " << (unsigned long long)top->{name};'
             for name, _ in extra_outputs]
    return HARNESS_CPP.replace("@EXTRA@", "\n".join(lines))


def write_job(path, runs):
    """Write the job file: ``runs`` is a list of ``(rows, table_words, act_words, out_beats,
    max_cycles)``."""
    with open(path, "w") as f:
        f.write(f"runs {len(runs)}\n")
        for rows, table, act, out_beats, max_cycles in runs:
            f.write(f"run {rows} {len(table)} {len(act)} {out_beats} {max_cycles}\n")
            f.write("".join(f"{w:x}\n" for w in (*table, *act)))

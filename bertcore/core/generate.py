"""Write an encoder core as IP: Verilog, manifest, lint waivers, FuseSoC core, example bench.

:func:`write_ip` writes, for a core named ``name``:

* ``<name>.v``: the Verilog of :class:`EncoderTop` (``verilog.convert``);
* ``<name>.json``: the manifest (configuration, every port from the component's signature,
  parameter-image size and fingerprint);
* ``<name>.vlt``: Verilator waivers (:func:`bertcore.toolchain.verilator_waivers`): with them
  ``verilator --lint-only -Wall <name>.vlt <name>.v`` is clean;
* ``<name>.core``: a FuseSoC CAPI2 core file with ``lint`` and (with a model) ``sim`` targets;

and with a quantized ``model`` also the parameter image (``params.bin``, ``params.hex``), an
example (``example_act.hex``, ``example_out.hex``: the int8 input of layer 0 of
:data:`EXAMPLE_TEXT` and the integer reference's output) and a self-checking Verilog testbench
``<name>_tb.v`` that replays both through the core (the ``sim`` target).
"""

import json
from pathlib import Path

from amaranth.back import verilog
from amaranth.hdl import Shape
from amaranth.lib.wiring import In

from .encoder import EncoderTop
from .image import FAIL_CAUSES, FORMAT_VERSION, config_fingerprint, image_beats

__all__ = ["generate", "write_ip", "manifest", "ports", "EXAMPLE_TEXT"]

#: The sentence of the example the testbench replays (truncated to the core's ``max_seq``).
EXAMPLE_TEXT = "A man is riding a horse along the beach."

#: The AXI4-Stream ports the testbench drives or reads, by prefix.
_STREAMS = ("s_axis_param", "s_axis_act", "m_axis_act")


def ports(top):
    """``[{"name", "direction", "width"}]`` of every port of the emitted module of ``top``.

    Derived from the component's signature (names joined by ``__``, as ``verilog.convert``
    names them), after the ``clk`` and ``rst`` of its ``sync`` domain.
    """
    out = [{"name": "clk", "direction": "in", "width": 1},
           {"name": "rst", "direction": "in", "width": 1}]
    for path, member in top.signature.members.flatten():
        if member.is_port:
            out.append({"name": "__".join(str(p) for p in path),
                        "direction": "in" if member.flow == In else "out",
                        "width": Shape.cast(member.shape).width})
    return out


def manifest(config, top, name="bertcore_encoder"):
    """The manifest of a core: configuration, ports (of the component ``top``) and the
    parameter-image size."""
    return {
        "module": name,
        "config": config.to_dict(),
        "ports": ports(top),
        "parameter_image": {
            "format_version": FORMAT_VERSION,
            "fingerprint": f"{config_fingerprint(config):#010x}",
            "beats": image_beats(config),
            "bytes": image_beats(config) * config.bus_width // 8,
        },
        "activations": {"layout": "row-major int8, little-endian within a beat, tlast on the "
                                  "last beat", "max_seq": config.max_seq,
                        "hidden": config.hidden},
        "outcome": {
            "packets": "exactly one packet on m_axis_act per run: the result (tuser 0 on every "
                       "beat) or, for a failed run, one beat with tlast 1, tuser 1 and the "
                       "cause code in tdata",
            "causes": {str(code): text for code, text in FAIL_CAUSES.items()},
            "failed_runs": "failed runs since reset (saturating)",
        },
        "reset": "synchronous, active high",
    }


def generate(config, outdir, name="bertcore_encoder", model=None):
    """Write the core's files into ``outdir`` (:func:`write_ip`); returns the paths of the
    Verilog and of the manifest."""
    files = write_ip(config, outdir, name, model)
    return files[0], files[1]


def write_ip(config, outdir, name="bertcore_encoder", model=None):
    """Write the core's files into ``outdir`` (created if needed); returns the written paths,
    the Verilog and the manifest first.

    ``model`` (an ``IntBert`` of the configuration's shape) adds the parameter image, the
    example and its testbench.
    """
    from ..toolchain import verilator_waivers
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    top = EncoderTop(config)
    files = {f"{name}.v": verilog.convert(top, name=name, emit_src=False)}
    files[f"{name}.json"] = json.dumps(manifest(config, top, name), indent=2) + "\n"
    files[f"{name}.vlt"] = verilator_waivers(files[f"{name}.v"], f"{name}.v")
    binary = {}
    if model is not None:
        from .image import image_to_hex, pack_parameter_image
        words = pack_parameter_image(model, config)
        nbytes = config.bus_width // 8
        binary["params.bin"] = b"".join(w.to_bytes(nbytes, "little") for w in words)
        files["params.hex"] = image_to_hex(words, config)
        act, out, rows = _example(model, config)
        files["example_act.hex"] = image_to_hex(act, config)
        files["example_out.hex"] = image_to_hex(out, config)
        files[f"{name}_tb.v"] = testbench(config, top, name, len(act), rows)
    files[f"{name}.core"] = fusesoc_core(config, name, example=model is not None)
    written = []
    for fname, text in files.items():
        (outdir / fname).write_text(text)
        written.append(outdir / fname)
    for fname, data in binary.items():
        (outdir / fname).write_bytes(data)
        written.append(outdir / fname)
    return written


def _example(model, config):
    """``(activation words, expected output words, rows)`` of :data:`EXAMPLE_TEXT`."""
    from .image import pack_activations
    ids = model.encode_text(EXAMPLE_TEXT)[:config.max_seq]
    x = model.embed_int(ids)
    return (pack_activations(x, config), pack_activations(model.encode_int(x), config),
            x.shape[0])


def _bus(width):
    return f"[{width - 1}:0] " if width > 1 else ""


def testbench(config, top, name, beats, rows):
    """A self-checking Verilog testbench ``<name>_tb`` for Icarus and Verilator (``--binary
    --timing``): it streams the parameter image (``+params=FILE``, ``$readmemh`` format of
    ``params.hex``) and an activation packet (``+act=FILE``) into the core, compares the output
    packet with ``+expect=FILE`` beat by beat (``tuser`` 0 on every beat; a failure packet,
    ``tuser`` 1, fails with its cause code), checks ``error``, that exactly one packet of
    ``ACT_BEATS`` beats comes out, prints ``cycles`` and ends with ``$finish`` (PASS) or
    ``$fatal`` (FAIL). ``+stall=N`` holds ``m_axis_act_tready`` low on about N % of the cycles
    (backpressure).
    """
    from .perf import run_cycles
    bus = config.bus_width
    timeout = 4 * run_cycles(config, rows) + 4 * image_beats(config) + 1000
    decls, conns, shows = [], [], []
    for p in ports(top)[2:]:
        n, w = p["name"], p["width"]
        if n == "m_axis_act_tready":
            decls.append(f"    reg  {n};")
        elif n.startswith(_STREAMS):
            decls.append(f"    wire {_bus(w)}{n};")
        elif p["direction"] == "in":        # an input the bench does not know: held at 0
            decls.append(f"    wire {_bus(w)}{n} = {w}'d0;")
        else:
            decls.append(f"    wire {_bus(w)}{n};")
            if n not in ("busy", "error"):
                shows.append(n)
        conns.append(f".{n}({n})")
    show_fmt = " ".join(f"{n}=%0d" for n in shows)
    show_args = "".join(f", {n}" for n in shows)
    return f"""\
// Self-checking testbench of {name}, written by bertcore generate. Plain Verilog-2005 for
// Icarus and for Verilator (--binary --timing). It replays the parameter image (+params=FILE,
// the $readmemh text of params.hex: {{tlast, tdata}} per line) and one activation packet
// (+act=FILE) through the core, compares the output with +expect=FILE beat by beat and checks
// the run's outcome (tuser 0 on every beat: a failed run's one-beat packet has tuser 1 and its
// cause code in tdata) and the error output. +stall=N: m_axis_act_tready low on about N % of
// the cycles.
`default_nettype none
module {name}_tb;
    localparam integer BUS = {bus};
    localparam integer IMAGE_BEATS = {image_beats(config)};
    localparam integer ACT_BEATS = {beats};      // {rows} rows of {config.hidden} int8
    localparam integer TIMEOUT = {timeout};   // cycles

    reg clk;
    reg rst;
    initial begin                 // no timescale: the bench counts cycles, not time
        clk = 1'b0;
        forever #5 clk = ~clk;
    end

{chr(10).join(decls)}

    {name} dut (
        .clk(clk), .rst(rst),
        {(','+chr(10)+'        ').join(conns)}
    );

    reg [BUS:0] image [0:IMAGE_BEATS-1];
    reg [BUS:0] act [0:ACT_BEATS-1];
    reg [BUS:0] golden [0:ACT_BEATS-1];
    reg [8*1024-1:0] file;
    integer stall;
    initial begin
        if (!$value$plusargs("params=%s", file)) begin
            $display("FAIL: give +params=FILE (params.hex)");
            $fatal(1);
        end
        $readmemh(file, image);
        if (!$value$plusargs("act=%s", file)) begin
            $display("FAIL: give +act=FILE (example_act.hex)");
            $fatal(1);
        end
        $readmemh(file, act);
        if (!$value$plusargs("expect=%s", file)) begin
            $display("FAIL: give +expect=FILE (example_out.hex)");
            $fatal(1);
        end
        $readmemh(file, golden);
        if (!$value$plusargs("stall=%d", stall))
            stall = 0;
    end

    // the image, then (from its first beat on) the activation packet, one beat per handshake
    integer pi, ai, oi, errors, cycle;
    wire [BUS:0] pword = image[pi < IMAGE_BEATS ? pi : 0];
    wire [BUS:0] aword = act[ai < ACT_BEATS ? ai : 0];
    assign s_axis_param_tvalid = !rst && pi < IMAGE_BEATS;
    assign s_axis_param_tdata = pword[BUS-1:0];
    assign s_axis_param_tlast = pword[BUS];
    assign s_axis_act_tvalid = !rst && pi > 0 && ai < ACT_BEATS;
    assign s_axis_act_tdata = aword[BUS-1:0];
    assign s_axis_act_tlast = aword[BUS];
    assign s_axis_act_tuser = 1'b0;       // a plain packet (no segment table)
    wire [BUS:0] want = golden[oi < ACT_BEATS ? oi : 0];

    always @(posedge clk) begin
        if (rst) begin
            pi <= 0;
            ai <= 0;
            oi <= 0;
            errors <= 0;
            cycle <= 0;
            m_axis_act_tready <= 1'b0;
        end else begin
            cycle <= cycle + 1;
            m_axis_act_tready <= ({{$random}} % 100) >= stall;
            if (s_axis_param_tvalid && s_axis_param_tready)
                pi <= pi + 1;
            if (s_axis_act_tvalid && s_axis_act_tready)
                ai <= ai + 1;
            if (m_axis_act_tvalid && m_axis_act_tready) begin
                if (m_axis_act_tuser) begin
                    $display("FAIL: the core rejected the run: cause code %0d at cycle %0d",
                             m_axis_act_tdata, cycle);
                    $fatal(1);
                end
                if (oi >= ACT_BEATS || {{m_axis_act_tlast, m_axis_act_tdata}} != want) begin
                    if (errors < 8)
                        $display("output beat %0d: got %h (tlast %0d), expected %h (tlast %0d)",
                                 oi, m_axis_act_tdata, m_axis_act_tlast, want[BUS-1:0],
                                 want[BUS]);
                    errors <= errors + 1;
                end
                oi <= oi + 1;
            end
            if (cycle >= TIMEOUT) begin
                $display("FAIL: timeout after %0d cycles (%0d of %0d output beats)", cycle, oi,
                         ACT_BEATS);
                $fatal(1);
            end
            if (oi == ACT_BEATS && !busy) begin
                // (a protocol error ends the run with a failure packet, above; error without
                // one is an internal unit's flag)
                if (error) begin
                    $display("FAIL: the core raised error at cycle %0d", cycle);
                    $fatal(1);
                end
                if (failed_runs != 0) begin
                    $display("FAIL: failed_runs is %0d", failed_runs);
                    $fatal(1);
                end
                if (errors != 0) begin
                    $display("FAIL: %0d of %0d output beats differ", errors, ACT_BEATS);
                    $fatal(1);
                end
                $display("PASS: %0d output beats bit-exact; {show_fmt}", ACT_BEATS{show_args});
                $finish;
            end
        end
    end

    initial begin
        rst = 1'b1;
        repeat (4) @(posedge clk);
        #1 rst = 1'b0;
    end
endmodule
`default_nettype wire
"""


def fusesoc_core(config, name, *, example):
    """A FuseSoC CAPI2 core file: the Verilog and its waivers, a ``lint`` target (Verilator
    ``-Wall``) and, with ``example``, a ``sim`` target running ``<name>_tb`` (Verilator by
    default, Icarus with ``--tool icarus``)."""
    from ..toolchain import VERILATOR_TIMING_MAKE_VARS
    shape = (f"hidden {config.hidden}, heads {config.heads}, ffn {config.ffn}, "
             f"layers {config.layers}, max_seq {config.max_seq}, "
             f"{config.array_rows}x{config.array_cols} array, {config.bus_width}-bit buses")
    # the example runs a few 10k cycles: its C++ is compiled without optimization (-O0, the
    # build takes minutes less)
    from importlib.metadata import PackageNotFoundError, version
    try:
        core_version = version("bertcore")
    except PackageNotFoundError:
        core_version = "0.0.0"
    make_flags = "".join(f"\n        - -MAKEFLAGS {v}"
                         for v in (*VERILATOR_TIMING_MAKE_VARS, "OPT_FAST=-O0"))
    text = f"""\
CAPI=2:
# FuseSoC core of {name}, written by bertcore generate.
#   fusesoc --cores-root . run --target lint bertcore:ip:{name}
#   fusesoc --cores-root . run --target sim bertcore:ip:{name}   (with --quantized only)
name: bertcore:ip:{name}:{core_version}
description: "bertcore integer-only BERT encoder core ({shape})"

filesets:
  rtl:
    files:
      - {name}.v
    file_type: verilogSource
  waivers:
    files:
      - {name}.vlt
    file_type: vlt
"""
    if example:
        text += f"""\
  tb:
    files:
      - {name}_tb.v
    file_type: verilogSource
  example:
    files:
      - params.hex: {{copyto: params.hex}}
      - example_act.hex: {{copyto: example_act.hex}}
      - example_out.hex: {{copyto: example_out.hex}}
    file_type: user
"""
    text += f"""
targets:
  default:
    filesets: [rtl]
    toplevel: {name}
  lint:
    filesets: [rtl, waivers]
    toplevel: {name}
    flow: lint
    flow_options:
      tool: verilator
      verilator_options: [-Wall]
"""
    if not example:
        return text + ("# No sim target: generate with --quantized FILE for the parameter "
                       "image and the example testbench.\n")
    text += f"""\
  sim:
    filesets: [rtl, waivers, tb, example]
    toplevel: {name}_tb
    flow: sim
    flow_options:
      tool: verilator
      mode: binary
      verilator_options:
        - -Wall
        - --timing{make_flags}
    parameters: [params, act, expect, stall]

parameters:
  params:
    datatype: str
    default: params.hex
    paramtype: plusarg
    description: Parameter image ($readmemh, tlast bit on top)
  act:
    datatype: str
    default: example_act.hex
    paramtype: plusarg
    description: Activation packet of the example ($readmemh, tlast bit on top)
  expect:
    datatype: str
    default: example_out.hex
    paramtype: plusarg
    description: Expected output packet (the integer reference)
  stall:
    datatype: int
    default: 0
    paramtype: plusarg
    description: Percent of cycles with m_axis_act_tready low
"""
    return text

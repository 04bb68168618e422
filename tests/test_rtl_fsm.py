"""bertcore.rtl.fsm: a binary state register in the Verilog, one-hot after yosys's ``fsm`` pass."""

from amaranth.back import verilog
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from bertcore.flow.report import report_verilog
from bertcore.rtl.fsm import Fsm
from rtl_sim import simulate

STATES = ["IDLE", "A", "B", "C", "D", "E"]


class _Machine(wiring.Component):
    """IDLE -> A -> ... -> E -> IDLE, one step per cycle of ``go``; ``back`` from B, C or D
    returns to A. ``code`` is the state's index, ``busy`` high outside IDLE (``ongoing``)."""

    def __init__(self):
        super().__init__({"go": In(1), "back": In(1), "code": Out(3), "busy": Out(1)})

    def elaborate(self, platform):
        m = Module()
        with Fsm(m, "machine") as fsm:
            for i, name in enumerate(STATES):
                with fsm.State(name):
                    m.d.comb += self.code.eq(i)
                    with m.If(self.back & (name in ("B", "C", "D"))):
                        fsm.next("A")
                    with m.Elif(self.go):
                        fsm.next(STATES[(i + 1) % len(STATES)])
            m.d.comb += self.busy.eq(~fsm.ongoing("IDLE"))
        return m


def _expected(steps):
    state, seen = 0, []
    for go, back in steps:
        seen.append(state)
        if back and STATES[state] in ("B", "C", "D"):
            state = 1
        elif go:
            state = (state + 1) % len(STATES)
    return seen


def test_fsm_steps():
    """The machine follows its transitions from the reset state (Amaranth simulator)."""
    dut = _Machine()
    steps = [(1, 0)] * 3 + [(0, 0), (1, 1), (1, 0), (1, 0), (0, 1), (1, 0)] + [(1, 0)] * 8
    got = []

    async def bench(ctx):
        for go, back in steps:
            ctx.set(dut.go, go)
            ctx.set(dut.back, back)
            got.append((ctx.get(dut.code), ctx.get(dut.busy)))
            await ctx.tick()

    simulate(dut, bench, name="fsm_steps")
    assert got == [(s, int(s != 0)) for s in _expected(steps)]


def test_fsm_one_hot_in_synthesis_only():
    """The Verilog holds a binary state register (5 bits for up to 32 states) marked
    ``fsm_encoding = "one-hot"``; yosys ``synth_ecp5`` re-encodes it: one flip-flop per state."""
    text = verilog.convert(_Machine(), name="top")
    assert "reg [4:0] machine_state" in text and '(* fsm_encoding = "one-hot" *)' in text
    # a missing yosys is a failure (ToolNotFound), never a skip
    report = report_verilog(text, "top", "ecp5-25k", pnr=False)
    assert report["resources"]["FF"] == len(STATES), report["resources"]

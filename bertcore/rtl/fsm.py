"""A state machine as an explicit state register and ``If`` blocks (Verilator-lint clean).

``m.FSM`` emits a Verilog ``case`` per signal covering only the states that assign it, which
``verilator -Wall`` rejects as incomplete (and the cocotb Verilator build treats as an error).
``with Fsm(m, "name") as fsm``, ``with fsm.State("A")`` and ``fsm.next("B")`` read like
``m.FSM``; states are numbered in order of first mention, the first one is the reset state.

The state register is binary in the Verilog and carries ``fsm_encoding = "one-hot"`` for
synthesis: yosys's ``fsm`` pass re-encodes it one-hot (a state test one flip-flop, each state
bit's next value an OR of the transitions into it). Unmarked, yosys leaves it binary, because
it does not re-encode a register with an initial value, and every Amaranth register has one;
the binary decode and next-state multiplexers were the ECP5 critical paths of the sequencer,
loader and UART bridge state machines at 110 MHz. The state is one-hot in synthesis only: a
one-hot register in the Verilog itself makes each state test a bare bit of a register, and
Icarus (``-g2012``) never runs a process whose inputs are only such bits of registers still at
their initial values, so its outputs stay X (the sequencer's failure flag after reset).

yosys's re-encoding drops the register's initial value (it warns: "Initialization value on FSM
state register is ignored"): on an FPGA the machine must be reset before it runs, as
Amaranth's domains are. bertcore's are: the board tops hold their clock domain in reset until
the PLL locks (``ResetSynchronizer``), and the core's datapath is reset by its ``abort``,
which is 1 at power-up.
"""

from amaranth.hdl import Signal

__all__ = ["Fsm"]


class Fsm:
    def __init__(self, m, name, width=5):
        self._m = m
        self.state = Signal(width, name=f"{name}_state", attrs={"fsm_encoding": "one-hot"})
        self._codes = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        assert len(self._codes) <= 1 << len(self.state), "too many states for the register"
        return False

    def _code(self, name):
        return self._codes.setdefault(name, len(self._codes))

    def State(self, name):
        return self._m.If(self.state == self._code(name))

    def next(self, name):
        self._m.d.sync += self.state.eq(self._code(name))

    def ongoing(self, name):
        return self.state == self._code(name)

"""A pyserial-like port onto the UART lines of a design in the Amaranth simulator.

The host code (:mod:`bertcore.board`) calls ``write``/``read`` as on a real port; ``read`` runs
the simulation until the bytes have arrived or ``timeout_bits`` bit times have passed since the
host's last byte left the line. The line is modelled bit by bit (8N1, ``divisor`` clock cycles
per bit): the design's ``rx`` is driven, its ``tx`` decoded at mid-bit.

Fault injection: :meth:`SimPort.corrupt_tx` flips bits of a byte the host sends,
:meth:`SimPort.corrupt_rx` of a byte the host receives (counted from the next write/read).
"""

from collections import deque

from amaranth.sim import Simulator

from rtl_sim import CLOCK_PERIOD

__all__ = ["SimPort"]

_FS = 10 ** 15


class SimPort:
    def __init__(self, dut, rx, tx, divisor, *, timeout_bits=600, processes=()):
        self.sim = Simulator(dut)
        self.sim.add_clock(CLOCK_PERIOD)
        self._bit = divisor * CLOCK_PERIOD
        self._to_board = deque()
        self._from_board = bytearray()
        self._break = 0.0
        self._sending = False
        self._tx_faults = {}
        self._rx_faults = {}
        self._tx_count = 0
        self._rx_count = 0
        self.timeout_bits = timeout_bits
        self.bytes_sent = 0
        bit = self._bit

        async def drive(ctx):
            ctx.set(rx, 1)
            while True:
                if self._break:
                    ctx.set(rx, 0)
                    await ctx.delay(self._break)
                    ctx.set(rx, 1)
                    self._break = 0.0
                    await ctx.delay(2 * bit)
                    continue
                if not self._to_board:
                    self._sending = False
                    await ctx.delay(bit)
                    continue
                self._sending = True
                byte = self._to_board.popleft()
                byte ^= self._tx_faults.pop(self._tx_count, 0)
                self._tx_count += 1
                self.bytes_sent += 1
                for level in [0] + [(byte >> i) & 1 for i in range(8)] + [1]:
                    ctx.set(rx, level)
                    await ctx.delay(bit)

        async def monitor(ctx):
            while True:
                await ctx.negedge(tx)
                await ctx.delay(1.5 * bit)
                byte = 0
                for i in range(8):
                    byte |= ctx.get(tx) << i
                    await ctx.delay(bit)
                assert ctx.get(tx) == 1, "framing error on the board's tx"
                byte ^= self._rx_faults.pop(self._rx_count, 0)
                self._rx_count += 1
                self._from_board.append(byte)

        self.sim.add_testbench(drive, background=True)
        self.sim.add_testbench(monitor, background=True)
        for process in processes:
            self.sim.add_process(process)

    @property
    def now(self):
        """Simulated time in seconds."""
        return self.sim._engine.now / _FS

    def corrupt_tx(self, offset, mask=0x10):
        """Flip ``mask`` in the ``offset``-th byte the host sends after this call."""
        self._tx_faults[self._tx_count + len(self._to_board) + offset] = mask

    def corrupt_rx(self, offset, mask=0x10):
        """Flip ``mask`` in the ``offset``-th byte the host receives after this call."""
        self._rx_faults[self._rx_count + offset] = mask

    # -- pyserial-like -----------------------------------------------------------------------

    def write(self, data):
        self._to_board.extend(bytes(data))
        return len(data)

    def read(self, n=1):
        while self._to_board or self._sending:
            if len(self._from_board) >= n:
                break
            self.sim.advance()
        deadline = self.now + self.timeout_bits * self._bit
        while len(self._from_board) < n and self.now < deadline:
            self.sim.advance()
        data = bytes(self._from_board[:n])
        del self._from_board[:n]
        return data

    def reset_input_buffer(self):
        self._from_board.clear()

    def send_break(self, duration=0.25):
        self._break = 30 * self._bit
        while self._break:
            self.sim.advance()

"""cocotb bench: the host code of :mod:`bertcore.board` talks over a bit-level simulated UART to
the emitted Verilog of :class:`bertcore.boards.top.UARTCoreTop` (UART bridge + encoder core).

The host code is blocking; it runs in a :func:`cocotb.task.bridge` thread and reaches the line
through :class:`CocotbPort`, whose ``read``/``write`` are :func:`cocotb.task.resume` coroutines.
``params``: ``divisor``, ``config`` (CoreConfig fields), ``image`` (words), ``runs`` (list of
``{"length", "act", "out"}``; with ``"table"`` the segment table of a packed run, sent in
ACT_TABLE frames; ``"out": {"failed": code}`` a run the core must fail with that cause),
``corrupt`` (``[frame_index, byte_offset, mask]``, with a fourth element a frame type whose
frames ``frame_index`` counts; or ``None``),
``timeout_bits``, ``poll_gap`` (clock cycles the host waits before each STATUS or READ
frame, as a real host's polls are spaced by the line's speed; default 0), ``report`` (a JSON
file for the test: stats, cycles, simulated time, the output of each run), ``check`` (default true: assert each output equals its ``out``; false:
the caller compares the report's outputs).

``sdram`` (a board top with the SDRAM image store on LiteDRAM's simulation model, see
:mod:`sim.sdram_top`): ``{"refresher", "store_busy", "param_valid": [candidate names below the
top], "capacity": SDRAM words, "polls", "preload", "bad_verify"}``; the host first tries a run
(refused: no image), then loads the image with :func:`bertcore.board.load_image` over the UART
or, with ``preload`` (the image preloaded into the SDRAM model), only verifies it
(``verify_only``; with ``bad_verify`` first another image's fingerprint and a word count larger
than the SDRAM, each refused), and runs from the SDRAM. Reported per run: the refresh commands
issued during it and the span of the image stream (the store's first ``m_param`` word to its
end, in cycles); and the cycles of the load or verify.
"""

import json
from collections import deque

import cocotb
from cocotb.clock import Clock
from cocotb.task import bridge, resume
from cocotb.triggers import ClockCycles, Event, FallingEdge, First, RisingEdge, Timer
from cocotb.utils import get_sim_time

from bertcore.uart_protocol import T_READ, T_STATUS
from sim.runner import tb_params

CLOCK_NS = 10


class CocotbPort:
    """A pyserial-like port on the ``rx``/``tx`` lines of ``dut`` (see :mod:`tests.uart_port`)."""

    def __init__(self, dut, divisor, timeout_bits, poll_gap=0):
        self.dut = dut
        self.bit_ns = divisor * CLOCK_NS
        self.timeout_bits = timeout_bits
        self.poll_gap_ns = poll_gap * CLOCK_NS
        self._to_board = deque()
        self._from_board = bytearray()
        self._tx_faults = {}
        self._tx_count = 0
        self._sending = False
        self._data = Event()
        self._idle = Event()
        self._got = Event()
        self._idle.set()

    def start(self):
        self.dut.rx.value = 1
        cocotb.start_soon(self._drive())
        cocotb.start_soon(self._monitor())

    async def _drive(self):
        while True:
            if not self._to_board:
                self._idle.set()
                self._data.clear()
                await self._data.wait()
                continue
            self._idle.clear()
            byte = self._to_board.popleft() ^ self._tx_faults.pop(self._tx_count, 0)
            self._tx_count += 1
            for level in [0] + [(byte >> i) & 1 for i in range(8)] + [1]:
                self.dut.rx.value = level
                await Timer(self.bit_ns, unit="ns")

    async def _monitor(self):
        while True:
            await FallingEdge(self.dut.tx)
            await Timer(self.bit_ns * 3 // 2, unit="ns")
            byte = 0
            for i in range(8):
                byte |= int(self.dut.tx.value) << i
                await Timer(self.bit_ns, unit="ns")
            assert int(self.dut.tx.value) == 1, "framing error on the board's tx"
            self._from_board.append(byte)
            self._got.set()

    def corrupt_tx(self, offset, mask):
        """Flip ``mask`` in the ``offset``-th byte written after this call."""
        self._tx_faults[self._tx_count + len(self._to_board) + offset] = mask

    async def _write(self, data):
        if self.poll_gap_ns and len(data) > 1 and data[1] in (T_STATUS, T_READ):
            await Timer(self.poll_gap_ns, unit="ns")         # the host's poll interval
        self._to_board.extend(data)
        self._idle.clear()
        self._data.set()

    async def _read(self, n):
        await self._idle.wait()
        deadline = get_sim_time("ns") + self.timeout_bits * self.bit_ns
        while len(self._from_board) < n:
            left = deadline - get_sim_time("ns")
            if left <= 0:
                break
            self._got.clear()
            await First(self._got.wait(), Timer(left, unit="ns"))
        data = bytes(self._from_board[:n])
        del self._from_board[:n]
        return data

    async def _flush(self):
        self._from_board.clear()

    # pyserial-like, called from the bridge thread
    def write(self, data):
        resume(self._write)(bytes(data))
        return len(data)

    def read(self, n=1):
        return resume(self._read)(n)

    def reset_input_buffer(self):
        resume(self._flush)()


def _now_cycles():
    return get_sim_time("ns") // CLOCK_NS


class StreamSpans:
    """The spans (first and last cycle) of the store's image streams: from the first
    ``m_param`` valid of a run to the end of the store's busy period (its last word taken)."""

    def __init__(self, busy, valid):
        self.busy, self.valid = busy, valid
        self.spans = []

    async def run(self):
        while True:
            await RisingEdge(self.valid)            # m_param streams only in a run
            start = _now_cycles()
            await FallingEdge(self.busy)
            self.spans.append([start, _now_cycles()])


def _verify_bad(link, p, config, extra):
    """Verify-only loads that must fail: another image's fingerprint, too many words."""
    import struct

    from bertcore import uart_protocol as P
    from bertcore.board import ImageStoreError, image_fingerprint, load_image
    wrong = list(p["image"])
    wrong[len(wrong) // 2] ^= 1 << 7
    try:
        load_image(link, wrong, config, verify_only=True, polls=p["sdram"]["polls"])
    except ImageStoreError as exc:
        extra["wrong_fingerprint"] = str(exc)
    too_many = p["sdram"]["capacity"] + 1
    st = link.store_command(P.T_VERIFY, struct.pack(
        "<II", too_many, image_fingerprint(p["image"], config.bus_width)))
    accepted = st["accepted"]
    while st.get("store_busy", True):
        st = link.status()
    extra["too_large"] = {"accepted": accepted, "image_error": st["image_error"],
                          "image_valid": st["image_valid"]}


def _host(port, p, refreshes=None):
    from bertcore.board import BoardLink, ImageStoreError, load_image, load_parameters, run
    from bertcore.config import CoreConfig
    from bertcore.core.image import RunFailed
    config = CoreConfig(**p["config"])
    link = BoardLink(port, retries=4)
    frames, sent = [], {}
    index, offset, mask, *kind = p.get("corrupt") or [None, 0, 0]
    original = link.transact

    def transact(ftype, payload=b""):
        sent[ftype] = sent.get(ftype, 0) + 1                # frames sent, by type
        if index is not None and (not kind or ftype == kind[0]):
            if len(frames) == index:
                port.corrupt_tx(offset, mask)
            frames.append(ftype)
        return original(ftype, payload)

    link.transact = transact
    load_parameters(link, p["image"], config)
    extra = {}
    if refreshes is not None:
        sd = p["sdram"]

        def refused(key):
            load_parameters(link, p["image"], config)
            try:
                run(link, p["runs"][0]["act"], p["runs"][0]["length"], config)
            except ImageStoreError as exc:
                extra[key] = str(exc)
        refused("refused")
        if sd.get("bad_verify"):
            _verify_bad(link, p, config, extra)
            refused("refused_after_bad_verify")
        start = _now_cycles()
        load_image(link, p["image"], config, verify_only=sd.get("preload", False),
                   polls=sd.get("polls", 10000))
        extra["load_cycles"] = _now_cycles() - start
        extra["refreshes"] = []
    outputs, cycles = [], []
    for r in p["runs"]:
        before = refreshes.count if refreshes is not None else 0
        try:
            outputs.append(run(link, r["act"], r["length"], config, table=r.get("table")))
        except RunFailed as exc:
            outputs.append({"failed": exc.code})
        cycles.append(link.cycles)
        if refreshes is not None:
            extra["refreshes"].append(refreshes.count - before)
    extra["frame_types"] = {f"0x{t:02x}": n for t, n in sorted(sent.items())}
    return outputs, cycles, dict(link.stats), extra


@cocotb.test()
async def host_runs(dut):
    p = tb_params()
    # the clock toggles in the simulator's GPI layer: a Python clock would wake Python twice per
    # cycle (the UART line is driven and watched in Python, bit by bit, only while it is busy)
    Clock(dut.clk, CLOCK_NS, unit="ns", impl="gpi").start(start_high=False)
    dut.rx.value = 1
    dut.rst.value = 1
    await ClockCycles(dut.clk, 3)
    dut.rst.value = 0
    await ClockCycles(dut.clk, 3)
    port = CocotbPort(dut, p["divisor"], p["timeout_bits"], p.get("poll_gap", 0))
    port.start()
    refreshes = spans = None
    if p.get("sdram"):
        from sim.tb_sdram import RefreshCounter, _lookup
        refreshes = RefreshCounter(_lookup(dut, p["sdram"]["refresher"]))
        cocotb.start_soon(refreshes.run())
        if "store_busy" in p["sdram"]:
            spans = StreamSpans(_lookup(dut, p["sdram"]["store_busy"]),
                                _lookup(dut, p["sdram"]["param_valid"]))
            cocotb.start_soon(spans.run())
    outputs, cycles, stats, extra = await bridge(_host)(port, p, refreshes)
    if spans is not None:
        extra["stream_spans"] = spans.spans
    for i, (got, r) in enumerate(zip(outputs, p["runs"])):
        if p.get("check", True):
            assert got == r["out"], f"run {i}: output {str(got)[:60]} differs from encode_int"
    dut._log.info(f"core cycles {cycles}, link {stats}, simulated {get_sim_time('ms'):.2f} ms")
    with open(p["report"], "w") as f:
        json.dump({"cycles": cycles, "stats": stats, "sim_ms": get_sim_time("ms"),
                   "outputs": outputs, **extra}, f)

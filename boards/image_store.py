"""The parameter image in SDRAM: load once (verified by its fingerprint), stream it every run.

:class:`ImageStore` sits between the UART bridge's parameter stream and the core's
``s_axis_param`` on a board with SDRAM (:class:`~boards.litedram.DRAMSubsystem`):

* **load** (``load`` pulse, then the image's words on ``s_load``, ``last`` on the final one):
  the words go to the DRAM from address 0, a CRC-32 runs over them as they are written; after
  the last, the image is read back from the DRAM with a second CRC-32 over what it returns.
  Equal: the image is ``valid`` and ``fingerprint`` is its CRC-32 (the host compares it with
  the CRC-32 of what it sent, ``zlib.crc32`` of the little-endian bytes). Different, or more
  words than the DRAM holds: ``error``, not valid.
* **verify** (``verify`` pulse with ``expect_words`` and ``expect_fingerprint``): a load without
  the writing, for an image the DRAM already holds (written before a reconfiguration of the FPGA
  that kept the SDRAM powered, or preloaded into a simulation model): the first
  ``expect_words`` words are read back with the CRC-32; equal to ``expect_fingerprint``: the
  image is ``valid`` with that fingerprint and word count. A different CRC-32, no words or more
  than the DRAM holds: ``error``, not valid (nothing is read for a bad count).
* **run** (``run`` pulse): the stored image streams from the DRAM to ``m_param`` (``last`` on
  its final word), as often as asked. A run without a valid image raises ``error`` and streams
  nothing.

Only one of load, verify and run is active at a time (``busy``); pulses while busy are ignored.
``cancel`` (the host's reset or a break on the line) ends any of them: an interrupted load leaves
no valid image; an interrupted run stops streaming (the image stays valid). Nothing of an
interrupted read leaks into a later one.
"""

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.crc.catalog import CRC32_ETHERNET
from amaranth.lib.wiring import In, Out

from .litedram import DRAMSubsystem

__all__ = ["ImageStore"]


class ImageStore(wiring.Component):
    """A parameter image kept in SDRAM (see the module docstring).

    Parameters
    ----------
    core : GeneratedCore
        The LiteDRAM core (:func:`boards.sdram.generate`).
    bus_width : int
        The encoder core's bus width (a power-of-two multiple of the DRAM port's width).
    pads : object, optional
        The SDRAM's pins (board variant).
    prefetch : int
        The DRAM reader's prefetch depth in port words.

    Members
    -------
    load, verify, run, cancel : ``In(1)``
        Pulses (see above).
    expect_words, expect_fingerprint : ``In(32)``
        The image a ``verify`` pulse claims the DRAM holds (read with the pulse).
    s_load : ``In(stream.Signature({"data": bus_width, "last": 1}))``
        Image words while loading (not taken otherwise).
    m_param : ``Out(stream.Signature({"data": bus_width, "last": 1}))``
        To the core's ``s_axis_param``.
    busy, valid, error : ``Out(1)``
    init_done, init_error : ``Out(1)``
        The SDRAM bring-up (nothing is taken or streamed before ``init_done``).
    fingerprint : ``Out(32)``
        CRC-32 of the image read back (valid with ``valid``).
    words : ``Out(...)``
        Words of the stored image.
    """

    def __init__(self, core, bus_width, *, pads=None, prefetch=64):
        self._dram = DRAMSubsystem(core, pads, data_width=bus_width, prefetch=prefetch)
        self._bus_width = bus_width
        layout = data.StructLayout({"data": bus_width, "last": 1})
        super().__init__({
            "load": In(1), "verify": In(1), "run": In(1), "cancel": In(1),
            "expect_words": In(32), "expect_fingerprint": In(32),
            "s_load": In(stream.Signature(layout)), "m_param": Out(stream.Signature(layout)),
            "busy": Out(1), "valid": Out(1), "error": Out(1),
            "init_done": Out(1), "init_error": Out(1),
            "fingerprint": Out(32), "words": Out(len(self._dram.w_written)),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.dram = dram = self._dram
        m.submodules.crc_in = crc_in = CRC32_ETHERNET(data_width=self._bus_width).create()
        m.submodules.crc_out = crc_out = CRC32_ETHERNET(data_width=self._bus_width).create()

        # states, as an if-chain on a register
        idle, loading, flushing, verifying, checking, running, stopping = range(7)
        state = Signal(range(7))
        m.d.comb += [
            self.busy.eq(state != idle),
            self.init_done.eq(dram.init_done), self.init_error.eq(dram.init_error),
            dram.w_base.eq(0), dram.r_base.eq(0),
            # the reader starts at the end of the flush with the count just written
            dram.r_count.eq(Mux(state == flushing, dram.w_written,
                                Mux((state == idle) & self.verify, self.expect_words,
                                    self.words))),
            dram.w_data.payload.eq(self.s_load.payload.data),
            crc_in.data.eq(self.s_load.payload.data),
            crc_out.data.eq(dram.m_axis.payload.data),
        ]
        ready = dram.init_done & (state == idle)
        # the CRC-32 the read-back must give: the one over the words written (load), or the
        # fingerprint claimed (verify)
        expected = Signal(32)
        capacity = 1 << (len(dram.r_count) - 1)          # bus words in the DRAM
        claim = self.expect_words
        claim_ok = (claim != 0) & (claim <= capacity)
        out_last = dram.m_axis.valid & dram.m_axis.ready & dram.m_axis.payload.last

        with m.If(state == idle):
            with m.If(ready & self.load):
                m.d.comb += [dram.w_start.eq(1), crc_in.start.eq(1)]
                m.d.sync += [state.eq(loading), self.valid.eq(0), self.error.eq(0)]
            with m.Elif(ready & self.verify):
                m.d.sync += [self.valid.eq(0), self.error.eq(~claim_ok),
                             expected.eq(self.expect_fingerprint)]
                with m.If(claim_ok):
                    m.d.comb += [dram.r_start.eq(1), crc_out.start.eq(1)]
                    m.d.sync += [self.words.eq(claim), state.eq(verifying)]
            with m.Elif(ready & self.run):
                with m.If(self.valid):
                    m.d.comb += dram.r_start.eq(1)
                    m.d.sync += state.eq(running)
                with m.Else():
                    m.d.sync += self.error.eq(1)        # no image to run on
        with m.Elif(state == loading):
            # the words to the writer, the CRC over the words taken
            taken = self.s_load.valid & self.s_load.ready
            m.d.comb += [dram.w_data.valid.eq(self.s_load.valid),
                         self.s_load.ready.eq(dram.w_data.ready), crc_in.valid.eq(taken)]
            with m.If(taken & self.s_load.payload.last):
                m.d.sync += state.eq(flushing)
        with m.Elif(state == flushing):
            # the last words reach the controller; then everything is read back
            with m.If(dram.w_overflow):
                m.d.sync += [self.error.eq(1), state.eq(idle)]
            with m.Elif(dram.w_idle):
                m.d.comb += [dram.r_start.eq(1), crc_out.start.eq(1)]
                m.d.sync += [self.words.eq(dram.w_written), expected.eq(crc_in.crc),
                             state.eq(verifying)]
        with m.Elif(state == verifying):
            m.d.comb += [dram.m_axis.ready.eq(1), crc_out.valid.eq(dram.m_axis.valid)]
            with m.If(out_last):
                m.d.sync += state.eq(checking)          # crc_out's register is updated
        with m.Elif(state == checking):
            match = crc_out.crc == expected
            m.d.sync += [self.fingerprint.eq(crc_out.crc), self.valid.eq(match),
                         self.error.eq(~match), state.eq(idle)]
        with m.Elif(state == running):                  # the image to the core
            m.d.comb += [self.m_param.valid.eq(dram.m_axis.valid),
                         self.m_param.payload.eq(dram.m_axis.payload),
                         dram.m_axis.ready.eq(self.m_param.ready)]
            with m.If(out_last):
                m.d.sync += state.eq(idle)
        with m.Else():                                  # stopping: the reader drains
            with m.If(~dram.r_busy):
                m.d.sync += state.eq(idle)

        with m.If(self.cancel & (state != idle) & (state != stopping)):
            m.d.comb += dram.r_cancel.eq(1)
            m.d.sync += state.eq(stopping)
            with m.If(state != running):
                m.d.sync += self.valid.eq(0)            # an interrupted load: no image
        return m

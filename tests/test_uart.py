"""Tests of the 8N1 UART (:mod:`bertcore.boards.uart`) in the Amaranth simulator.

Seeded random bytes through transmitter → receiver, a bit-level line model whose bit period
differs from the receiver's by a few percent (sub-cycle timing with ``ctx.delay``), framing
errors, glitches and overrun.
"""

import random

import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring

from bertcore.boards.uart import UARTRx, UARTTx, uart_divisor
from rtl_sim import CLOCK_PERIOD, simulate, stream_get, stream_put


class Loop(wiring.Component):
    """Transmitter wired to receiver."""

    def __init__(self, divisor):
        self.tx = UARTTx(divisor)
        self.rx = UARTRx(divisor)
        super().__init__({})

    def elaborate(self, platform):
        m = Module()
        m.submodules.tx, m.submodules.rx = self.tx, self.rx
        m.d.comb += self.rx.rx.eq(self.tx.tx)
        return m


@pytest.mark.parametrize("divisor", [4, 7, 16])
def test_loopback_random_bytes(divisor):
    dut = Loop(divisor)
    rng = random.Random(divisor)
    sent = [rng.randrange(256) for _ in range(40)] + [0x00, 0xFF, 0x55, 0xAA]

    async def put(ctx):
        await stream_put(ctx, dut.tx.i_stream, sent, rng=random.Random(1), stall=0.3)

    async def get(ctx):
        # the consumer may stall, but takes each byte well within a byte time
        got = await stream_get(ctx, dut.rx.o_stream, len(sent), rng=random.Random(2), stall=0.3)
        assert got == sent

    async def errors(ctx):
        async for _, _, ferr, ovr in ctx.tick().sample(dut.rx.frame_error, dut.rx.overrun):
            assert not ferr and not ovr

    simulate(dut, put, get, name=f"uart_loop_{divisor}", processes=[errors], deadline=1e-3)


def _line(dut, frames, bit_time, *, idle=2.0):
    """A testbench that drives ``dut.rx`` with ``frames``: lists of line levels (one per bit)."""
    async def drive(ctx):
        ctx.set(dut.rx, 1)
        await ctx.delay(3.3 * bit_time)
        for levels in frames:
            for level in levels:
                ctx.set(dut.rx, level)
                await ctx.delay(bit_time)
            ctx.set(dut.rx, 1)
            await ctx.delay(idle * bit_time)
    return drive


def _bits(byte, stop=1):
    return [0] + [(byte >> i) & 1 for i in range(8)] + [stop]


@pytest.mark.parametrize("divisor,error", [(16, -0.04), (16, 0.04), (8, -0.02), (8, 0.02)])
def test_rx_baud_mismatch(divisor, error):
    """Back-to-back bytes (no idle gap) from a transmitter whose bit period is off by ``error``."""
    dut = UARTRx(divisor)
    rng = random.Random(int(error * 100) + divisor)
    sent = [rng.randrange(256) for _ in range(24)] + [0x00, 0xFF]
    bit_time = divisor * CLOCK_PERIOD * (1 + error)

    async def get(ctx):
        ctx.set(dut.o_stream.ready, 1)
        got = []
        async for _, _, valid, data, ferr in ctx.tick().sample(
                dut.o_stream.valid, dut.o_stream.payload, dut.frame_error):
            assert not ferr
            if valid:
                got.append(data)
                if len(got) == len(sent):
                    break
        assert got == sent

    simulate(dut, get, _line(dut, [_bits(b) for b in sent], bit_time, idle=0), name="uart_baud",
             deadline=1e-3)


def test_rx_framing_error_glitch_and_overrun():
    divisor = 8
    dut = UARTRx(divisor)
    bit_time = divisor * CLOCK_PERIOD
    frames = [
        _bits(0x3C),
        _bits(0x81, stop=0) + [0] * 12,  # framing error, then a break: one error
        [0] * 0,                         # (placeholder: idle)
        _bits(0x5A),                     # after the line returns high: received again
        _bits(0x11),                     # not taken (ready low): overrun of the next
        _bits(0x22),
    ]
    events = {"ferr": 0, "ovr": 0}

    async def glitch_then_frames(ctx):
        ctx.set(dut.rx, 1)
        await ctx.delay(2 * bit_time)
        ctx.set(dut.rx, 0)                # a glitch shorter than half a bit: ignored
        await ctx.delay(0.25 * bit_time)
        ctx.set(dut.rx, 1)
        await ctx.delay(2 * bit_time)
        await _line(dut, frames, bit_time)(ctx)

    async def get(ctx):
        got = []
        ctx.set(dut.o_stream.ready, 1)
        while len(got) < 2:
            _, _, valid, data = await ctx.tick().sample(dut.o_stream.valid, dut.o_stream.payload)
            if valid:
                got.append(data)
        assert got == [0x3C, 0x5A]
        ctx.set(dut.o_stream.ready, 0)
        await ctx.tick().until(dut.overrun)
        await ctx.tick()
        assert ctx.get(dut.o_stream.valid) and ctx.get(dut.o_stream.payload) == 0x11
        await ctx.delay(5 * bit_time)
        assert events == {"ferr": 1, "ovr": 1}

    async def count(ctx):
        async for _, _, ferr, ovr in ctx.tick().sample(dut.frame_error, dut.overrun):
            events["ferr"] += ferr
            events["ovr"] += ovr

    simulate(dut, get, glitch_then_frames, name="uart_errors", processes=[count], deadline=1e-3)


def test_divisor_and_parameter_errors():
    assert uart_divisor(100e6, 1_000_000) == 100
    assert uart_divisor(12e6, 115200) == 104
    with pytest.raises(ValueError, match=r"too high for a 12 MHz clock \(divisor 3 < 4\)"):
        uart_divisor(12e6, 4_000_000)
    with pytest.raises(ValueError, match=r"off at a 0.03 MHz clock"):
        uart_divisor(30e3, 5500)
    with pytest.raises(ValueError, match=r"divisor must be an integer of at least 4, not 3"):
        UARTRx(3)
    with pytest.raises(ValueError, match=r"not 8.0"):
        UARTTx(8.0)

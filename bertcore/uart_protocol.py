"""Constants and the frame codec of the UART host protocol (``docs/uart-protocol.md``).

Shared by the gateware (:mod:`boards.bridge`) and the host (:mod:`bertcore.board`), so that
codes, the CRC and the layout are defined once.

A frame is ``SOF, type, seq, len_lo, len_hi, payload[len], crc_hi, crc_lo``; the CRC is
CRC-16/CCITT-FALSE (polynomial 0x1021, initial value 0xFFFF, no reflection, no final XOR) over
``type .. payload``, sent high byte first, so that the CRC over ``type .. crc_lo`` is zero.
"""

import binascii

from amaranth.lib.crc import catalog

__all__ = ["SOF", "T_PARAM", "T_PARAM_LAST", "T_ACT", "T_ACT_LAST", "T_ACT_TABLE", "T_READ",
           "T_STATUS", "T_RESET", "T_LOAD", "T_RUN", "T_VERIFY", "VERIFY_BYTES", "R_ACK", "R_NAK",
           "R_DATA", "R_STATUS", "NAK_CRC", "NAK_LENGTH",
           "NAK_TYPE", "NAK_FRAMING", "NAK_TIMEOUT", "NAK_REASONS", "HEADER_BYTES",
           "TRAILER_BYTES", "STATUS_BYTES", "DATA_LAST", "DATA_ERROR", "DATA_FAILED", "ST_BUSY",
           "ST_ERROR",
           "ST_OUTPUT", "ST_LOST", "ST_TABLE", "SDRAM_STATUS_BYTES", "SD_INIT_DONE",
           "SD_INIT_ERROR", "SD_VALID", "SD_ERROR", "SD_BUSY", "SD_LOADING", "SD_ACCEPTED",
           "CRC16", "crc16", "encode_frame"]

#: Start-of-frame byte.
SOF = 0xA5

# Host → board frame types.
T_PARAM = 0x01          # words for s_axis_param
T_PARAM_LAST = 0x11     # ... the last one with tlast
T_ACT = 0x02            # words for s_axis_act
T_ACT_LAST = 0x12       # ... the last one with tlast
T_ACT_TABLE = 0x22      # words for s_axis_act with tuser = 1: a packed packet's segment table
T_READ = 0x03           # take output words from m_axis_act
T_STATUS = 0x04         # read busy/error/cycles
T_RESET = 0x05          # reset the core (abort any run)
# ... only on a board with an SDRAM image store (others NAK them: unknown type)
T_LOAD = 0x06           # the following PARAM .. PARAM_LAST frames go into the SDRAM image
T_RUN = 0x07            # stream the stored image into s_axis_param (then ACT, READ as usual)
T_VERIFY = 0x08         # verify-only load: payload words (u32 LE) + fingerprint (u32 LE) of the
                        # image the SDRAM already holds; the store reads it back and compares
#: Payload bytes of a VERIFY frame.
VERIFY_BYTES = 8

# Board → host reply types.
R_ACK = 0x80
R_NAK = 0x81
R_DATA = 0x83
R_STATUS = 0x84

# NAK reasons (the one payload byte of a NAK).
NAK_CRC = 1             # checksum mismatch
NAK_LENGTH = 2          # payload longer than the buffer, or not whole bus words
NAK_TYPE = 3            # unknown frame type
NAK_FRAMING = 4         # a UART framing error inside the frame
NAK_TIMEOUT = 5         # the line went idle in the middle of a frame
NAK_REASONS = {NAK_CRC: "checksum mismatch", NAK_LENGTH: "bad length",
               NAK_TYPE: "unknown frame type", NAK_FRAMING: "UART framing error",
               NAK_TIMEOUT: "frame timeout"}

#: Bytes before the payload (SOF, type, seq, length) and after it (CRC).
HEADER_BYTES = 5
TRAILER_BYTES = 2

# DATA payload: one flag byte, then whole bus words (little-endian bytes).
DATA_LAST = 0x01        # the packet's last word (tlast) is in this reply
DATA_ERROR = 0x02       # the core's error output is high
DATA_FAILED = 0x04      # the packet is a failed run's failure packet: its one word is the cause

# STATUS payload: flags, cycles (u32 LE), bus bytes (u8), buffer bytes (u16 LE).
STATUS_BYTES = 8
ST_BUSY = 0x01
ST_ERROR = 0x02
ST_OUTPUT = 0x04        # an output word is waiting (m_axis_act_tvalid)
ST_LOST = 0x08          # a received byte was lost (sent while the bridge was busy) since STATUS
ST_TABLE = 0x10         # the bridge forwards ACT_TABLE frames (packed runs; older bridges NAK them)

# A board with an SDRAM image store appends to STATUS: SDRAM flags (u8), the stored image's
# fingerprint (u32 LE, CRC-32 = zlib.crc32 of its little-endian words) and its words (u32 LE).
SDRAM_STATUS_BYTES = STATUS_BYTES + 9
SD_INIT_DONE = 0x01     # the SDRAM bring-up finished
SD_INIT_ERROR = 0x02    # ... and its check failed (the DRAM is unusable)
SD_VALID = 0x04         # a loaded image verified (fingerprint and words are meaningful)
SD_ERROR = 0x08         # the last load did not verify / was too large, or RUN without an image
SD_BUSY = 0x10          # the store is loading, verifying or streaming
SD_LOADING = 0x20       # PARAM frames go to the store (after LOAD, until PARAM_LAST)
SD_ACCEPTED = 0x40      # (the reply to LOAD / RUN / VERIFY) the store took the command


#: The frame check sequence as an Amaranth CRC algorithm (the gateware's ``crc.Processor``).
CRC16 = catalog.CRC16_CCITT_FALSE


def crc16(data, crc=CRC16.initial_crc):
    """CRC-16/CCITT-FALSE of ``data``, continued from ``crc``.

    ``binascii.crc_hqx`` is this CRC (no reflection, no final XOR) when started at 0xFFFF.

    >>> hex(crc16(b"123456789"))
    '0x29b1'
    """
    return binascii.crc_hqx(bytes(data), crc)


def encode_frame(ftype, seq, payload=b""):
    """The bytes of one frame."""
    payload = bytes(payload)
    if len(payload) > 0xFFFF:
        raise ValueError(f"payload of {len(payload)} bytes is longer than 65535")
    body = bytes([ftype, seq & 0xFF, len(payload) & 0xFF, len(payload) >> 8]) + payload
    crc = crc16(body)
    return bytes([SOF]) + body + bytes([crc >> 8, crc & 0xFF])

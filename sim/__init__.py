"""cocotb benches of the emitted Verilog (``tb_<unit>.py``) and the helpers they share."""

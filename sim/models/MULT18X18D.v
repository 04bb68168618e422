// Behavioural simulation model of the Lattice ECP5 MULT18X18D (one 18x18 multiplier of a sysDSP
// block), written for bertcore from Lattice's documented behaviour of the primitive (ECP5 and
// ECP5-5G sysDSP Usage Guide) with the parameter and port names of yosys' techlibs
// (share/lattice/cells_bb_ecp5.v), which ship only a blackbox. It models:
//
// * the operands: A and B (SOURCEA/SOURCEB low) or the shift inputs SRIA/SRIB (high), each
//   sign- or zero-extended by SIGNEDA/SIGNEDB; P = A * B in 36 bits;
// * the input registers of A and B (each also registering its SIGNEDA/SIGNEDB bit), the
//   pipeline register (product and SIGNEDP) and the output register (P): each is in the path
//   when its REG_*_CLK names a clock line (CLK0..CLK3) and bypassed when it is "NONE", with the
//   clock enable REG_*_CE (CE0..CE3) and reset REG_*_RST (RST0..RST3) it names; the reset wins
//   over the enable and is synchronous (RESETMODE "SYNC") or asynchronous ("ASYNC"); every
//   register starts at 0 (the state after configuration);
// * ROA/SROA, ROB/SROB (the operands after the input registers) and ROC (C after its register).
//
// Not modelled: SOURCEB_MODE other than "B_SHIFT", HIGHSPEED_CLK, CAS_MATCH_REG "TRUE",
// MULT_BYPASS "ENABLED", the global set/reset (GSR) and the CLKn_DIV settings (which matter only
// with HIGHSPEED_CLK): every register clocks on the rising edge of its clock line.

`default_nettype none

// One register stage of the block: its clock, enable and reset taken from the block's four
// lines by the parameters (the last character of "CLKn", "CEn", "RSTn" names the line n).
module MULT18X18D_register #(
    parameter integer WIDTH = 18,
    parameter CLK_SEL = "NONE",
    parameter CE_SEL = "CE0",
    parameter RST_SEL = "RST0",
    parameter RESETMODE = "SYNC"
) (
    input wire [3:0] clk,
    input wire [3:0] ce,
    input wire [3:0] rst,
    input wire [WIDTH-1:0] d,
    output wire [WIDTH-1:0] q
);
    localparam [7:0] CLK_CHAR = CLK_SEL;    // the last character of each setting
    localparam [7:0] CE_CHAR = CE_SEL;
    localparam [7:0] RST_CHAR = RST_SEL;
    wire c = clk[CLK_CHAR[1:0]];            // "0".."3" are 8'h30..8'h33
    wire e = ce[CE_CHAR[1:0]];
    wire r = rst[RST_CHAR[1:0]];
    reg [WIDTH-1:0] value;
    initial value = {WIDTH{1'b0}};
    generate
        if (RESETMODE == "ASYNC") begin : async_reset
            always @(posedge c or posedge r)
                if (r) value <= {WIDTH{1'b0}};
                else if (e) value <= d;
        end else begin : sync_reset
            always @(posedge c)
                if (r) value <= {WIDTH{1'b0}};
                else if (e) value <= d;
        end
    endgenerate
    assign q = (CLK_SEL == "NONE") ? d : value;
endmodule

module MULT18X18D (
    A17, A16, A15, A14, A13, A12, A11, A10, A9, A8, A7, A6, A5, A4, A3, A2, A1, A0, B17, B16,
    B15, B14, B13, B12, B11, B10, B9, B8, B7, B6, B5, B4, B3, B2, B1, B0, C17, C16, C15, C14,
    C13, C12, C11, C10, C9, C8, C7, C6, C5, C4, C3, C2, C1, C0, SRIA17, SRIA16, SRIA15, SRIA14,
    SRIA13, SRIA12, SRIA11, SRIA10, SRIA9, SRIA8, SRIA7, SRIA6, SRIA5, SRIA4, SRIA3, SRIA2,
    SRIA1, SRIA0, SRIB17, SRIB16, SRIB15, SRIB14, SRIB13, SRIB12, SRIB11, SRIB10, SRIB9, SRIB8,
    SRIB7, SRIB6, SRIB5, SRIB4, SRIB3, SRIB2, SRIB1, SRIB0, SROA17, SROA16, SROA15, SROA14,
    SROA13, SROA12, SROA11, SROA10, SROA9, SROA8, SROA7, SROA6, SROA5, SROA4, SROA3, SROA2,
    SROA1, SROA0, SROB17, SROB16, SROB15, SROB14, SROB13, SROB12, SROB11, SROB10, SROB9, SROB8,
    SROB7, SROB6, SROB5, SROB4, SROB3, SROB2, SROB1, SROB0, ROA17, ROA16, ROA15, ROA14, ROA13,
    ROA12, ROA11, ROA10, ROA9, ROA8, ROA7, ROA6, ROA5, ROA4, ROA3, ROA2, ROA1, ROA0, ROB17,
    ROB16, ROB15, ROB14, ROB13, ROB12, ROB11, ROB10, ROB9, ROB8, ROB7, ROB6, ROB5, ROB4, ROB3,
    ROB2, ROB1, ROB0, ROC17, ROC16, ROC15, ROC14, ROC13, ROC12, ROC11, ROC10, ROC9, ROC8, ROC7,
    ROC6, ROC5, ROC4, ROC3, ROC2, ROC1, ROC0, P35, P34, P33, P32, P31, P30, P29, P28, P27, P26,
    P25, P24, P23, P22, P21, P20, P19, P18, P17, P16, P15, P14, P13, P12, P11, P10, P9, P8, P7,
    P6, P5, P4, P3, P2, P1, P0, SIGNEDA, SIGNEDB, SOURCEA, SOURCEB, CLK3, CLK2, CLK1, CLK0,
    CE3, CE2, CE1, CE0, RST3, RST2, RST1, RST0, SIGNEDP
);
    parameter REG_INPUTA_CLK = "NONE";
    parameter REG_INPUTA_CE = "CE0";
    parameter REG_INPUTA_RST = "RST0";
    parameter REG_INPUTB_CLK = "NONE";
    parameter REG_INPUTB_CE = "CE0";
    parameter REG_INPUTB_RST = "RST0";
    parameter REG_INPUTC_CLK = "NONE";
    parameter REG_INPUTC_CE = "CE0";
    parameter REG_INPUTC_RST = "RST0";
    parameter REG_PIPELINE_CLK = "NONE";
    parameter REG_PIPELINE_CE = "CE0";
    parameter REG_PIPELINE_RST = "RST0";
    parameter REG_OUTPUT_CLK = "NONE";
    parameter REG_OUTPUT_CE = "CE0";
    parameter REG_OUTPUT_RST = "RST0";
    parameter RESETMODE = "SYNC";
    /* verilator lint_off UNUSEDPARAM */
    // accepted for the primitive's interface; see the header for what is not modelled
    parameter CLK0_DIV = "ENABLED";
    parameter CLK1_DIV = "ENABLED";
    parameter CLK2_DIV = "ENABLED";
    parameter CLK3_DIV = "ENABLED";
    parameter HIGHSPEED_CLK = "NONE";
    parameter GSR = "ENABLED";
    parameter CAS_MATCH_REG = "FALSE";
    parameter SOURCEB_MODE = "B_SHIFT";
    parameter MULT_BYPASS = "DISABLED";
    /* verilator lint_on UNUSEDPARAM */

    input A17, A16, A15, A14, A13, A12, A11, A10, A9, A8, A7, A6;
    input A5, A4, A3, A2, A1, A0;
    input B17, B16, B15, B14, B13, B12, B11, B10, B9, B8, B7, B6;
    input B5, B4, B3, B2, B1, B0;
    input C17, C16, C15, C14, C13, C12, C11, C10, C9, C8, C7, C6;
    input C5, C4, C3, C2, C1, C0;
    input SRIA17, SRIA16, SRIA15, SRIA14, SRIA13, SRIA12;
    input SRIA11, SRIA10, SRIA9, SRIA8, SRIA7, SRIA6;
    input SRIA5, SRIA4, SRIA3, SRIA2, SRIA1, SRIA0;
    input SRIB17, SRIB16, SRIB15, SRIB14, SRIB13, SRIB12;
    input SRIB11, SRIB10, SRIB9, SRIB8, SRIB7, SRIB6;
    input SRIB5, SRIB4, SRIB3, SRIB2, SRIB1, SRIB0;
    input SIGNEDA, SIGNEDB, SOURCEA, SOURCEB;
    input CLK3, CLK2, CLK1, CLK0, CE3, CE2, CE1, CE0, RST3, RST2, RST1, RST0;
    output SROA17, SROA16, SROA15, SROA14, SROA13, SROA12;
    output SROA11, SROA10, SROA9, SROA8, SROA7, SROA6;
    output SROA5, SROA4, SROA3, SROA2, SROA1, SROA0;
    output SROB17, SROB16, SROB15, SROB14, SROB13, SROB12;
    output SROB11, SROB10, SROB9, SROB8, SROB7, SROB6;
    output SROB5, SROB4, SROB3, SROB2, SROB1, SROB0;
    output ROA17, ROA16, ROA15, ROA14, ROA13, ROA12, ROA11, ROA10, ROA9, ROA8, ROA7, ROA6;
    output ROA5, ROA4, ROA3, ROA2, ROA1, ROA0;
    output ROB17, ROB16, ROB15, ROB14, ROB13, ROB12, ROB11, ROB10, ROB9, ROB8, ROB7, ROB6;
    output ROB5, ROB4, ROB3, ROB2, ROB1, ROB0;
    output ROC17, ROC16, ROC15, ROC14, ROC13, ROC12, ROC11, ROC10, ROC9, ROC8, ROC7, ROC6;
    output ROC5, ROC4, ROC3, ROC2, ROC1, ROC0;
    output P35, P34, P33, P32, P31, P30, P29, P28, P27, P26, P25, P24;
    output P23, P22, P21, P20, P19, P18, P17, P16, P15, P14, P13, P12;
    output P11, P10, P9, P8, P7, P6, P5, P4, P3, P2, P1, P0;
    output SIGNEDP;

    wire [3:0] clk = {CLK3, CLK2, CLK1, CLK0};
    wire [3:0] ce = {CE3, CE2, CE1, CE0};
    wire [3:0] rst = {RST3, RST2, RST1, RST0};

    wire [17:0] a_port = {A17, A16, A15, A14, A13, A12, A11, A10, A9,
                          A8, A7, A6, A5, A4, A3, A2, A1, A0};
    wire [17:0] b_port = {B17, B16, B15, B14, B13, B12, B11, B10, B9,
                          B8, B7, B6, B5, B4, B3, B2, B1, B0};
    wire [17:0] c_in = {C17, C16, C15, C14, C13, C12, C11, C10, C9,
                        C8, C7, C6, C5, C4, C3, C2, C1, C0};
    wire [17:0] sria = {SRIA17, SRIA16, SRIA15, SRIA14, SRIA13, SRIA12, SRIA11, SRIA10, SRIA9,
                        SRIA8, SRIA7, SRIA6, SRIA5, SRIA4, SRIA3, SRIA2, SRIA1, SRIA0};
    wire [17:0] srib = {SRIB17, SRIB16, SRIB15, SRIB14, SRIB13, SRIB12, SRIB11, SRIB10, SRIB9,
                        SRIB8, SRIB7, SRIB6, SRIB5, SRIB4, SRIB3, SRIB2, SRIB1, SRIB0};
    wire [17:0] a_in = SOURCEA ? sria : a_port;
    wire [17:0] b_in = SOURCEB ? srib : b_port;

    // input registers: each operand with its signedness bit
    wire [18:0] a_reg, b_reg;
    wire [17:0] c_reg;
    MULT18X18D_register #(.WIDTH(19), .CLK_SEL(REG_INPUTA_CLK), .CE_SEL(REG_INPUTA_CE),
                          .RST_SEL(REG_INPUTA_RST), .RESETMODE(RESETMODE))
        input_a (.clk(clk), .ce(ce), .rst(rst), .d({SIGNEDA, a_in}), .q(a_reg));
    MULT18X18D_register #(.WIDTH(19), .CLK_SEL(REG_INPUTB_CLK), .CE_SEL(REG_INPUTB_CE),
                          .RST_SEL(REG_INPUTB_RST), .RESETMODE(RESETMODE))
        input_b (.clk(clk), .ce(ce), .rst(rst), .d({SIGNEDB, b_in}), .q(b_reg));
    MULT18X18D_register #(.WIDTH(18), .CLK_SEL(REG_INPUTC_CLK), .CE_SEL(REG_INPUTC_CE),
                          .RST_SEL(REG_INPUTC_RST), .RESETMODE(RESETMODE))
        input_c (.clk(clk), .ce(ce), .rst(rst), .d(c_in), .q(c_reg));

    // the multiplier: both operands extended to 36 bits by their signedness, product mod 2**36
    wire [35:0] a_ext = {{18{a_reg[18] & a_reg[17]}}, a_reg[17:0]};
    wire [35:0] b_ext = {{18{b_reg[18] & b_reg[17]}}, b_reg[17:0]};
    wire [35:0] product_low = a_ext * b_ext;      // 36-bit context: the product mod 2**36
    wire [36:0] product = {a_reg[18] | b_reg[18], product_low};

    // pipeline register (product and SIGNEDP), output register (P)
    wire [36:0] pipelined;
    wire [35:0] p;
    MULT18X18D_register #(.WIDTH(37), .CLK_SEL(REG_PIPELINE_CLK), .CE_SEL(REG_PIPELINE_CE),
                          .RST_SEL(REG_PIPELINE_RST), .RESETMODE(RESETMODE))
        pipeline (.clk(clk), .ce(ce), .rst(rst), .d(product), .q(pipelined));
    MULT18X18D_register #(.WIDTH(36), .CLK_SEL(REG_OUTPUT_CLK), .CE_SEL(REG_OUTPUT_CE),
                          .RST_SEL(REG_OUTPUT_RST), .RESETMODE(RESETMODE))
        output_p (.clk(clk), .ce(ce), .rst(rst), .d(pipelined[35:0]), .q(p));

    assign {P35, P34, P33, P32, P31, P30, P29, P28, P27, P26, P25, P24, P23, P22, P21, P20,
            P19, P18, P17, P16, P15, P14, P13, P12, P11, P10, P9, P8, P7, P6, P5, P4, P3, P2,
            P1, P0} = p;
    assign SIGNEDP = pipelined[36];
    assign {ROA17, ROA16, ROA15, ROA14, ROA13, ROA12, ROA11, ROA10, ROA9, ROA8, ROA7, ROA6,
            ROA5, ROA4, ROA3, ROA2, ROA1, ROA0} = a_reg[17:0];
    assign {SROA17, SROA16, SROA15, SROA14, SROA13, SROA12, SROA11, SROA10, SROA9, SROA8,
            SROA7, SROA6, SROA5, SROA4, SROA3, SROA2, SROA1, SROA0} = a_reg[17:0];
    assign {ROB17, ROB16, ROB15, ROB14, ROB13, ROB12, ROB11, ROB10, ROB9, ROB8, ROB7, ROB6,
            ROB5, ROB4, ROB3, ROB2, ROB1, ROB0} = b_reg[17:0];
    assign {SROB17, SROB16, SROB15, SROB14, SROB13, SROB12, SROB11, SROB10, SROB9, SROB8,
            SROB7, SROB6, SROB5, SROB4, SROB3, SROB2, SROB1, SROB0} = b_reg[17:0];
    assign {ROC17, ROC16, ROC15, ROC14, ROC13, ROC12, ROC11, ROC10, ROC9, ROC8, ROC7, ROC6,
            ROC5, ROC4, ROC3, ROC2, ROC1, ROC0} = c_reg;
endmodule

`default_nettype wire

// Behavioural simulation model of the Lattice ECP5 DP16KD (a 16 Kbit true dual-port block RAM),
// written for bertcore from Lattice's documented behaviour of the primitive (ECP5 and ECP5-5G
// Memory Usage Guide) with the parameter and port names of yosys' techlibs
// (share/lattice/cells_sim_ecp5.v declares its ports and parameters only). It models the
// 1024 x 18 mode (DATA_WIDTH_A = DATA_WIDTH_B = 18) with synchronous reset, per port:
//
// * the word address AD[13:4]; on a write, AD[1:0] enable the bytes DI[8:0] and DI[17:9];
// * chip select: the port is selected while {CS2, CS1, CS0} equals CSDECODE ("0b000".."0b111");
// * at the rising clock edge, while CE and the port is selected: a write (WE high) stores the
//   enabled bytes; a read (WE low) loads the addressed word into the port's read register;
//   during a write the read register keeps its word (WRITEMODE "NORMAL"), takes the word as
//   written ("WRITETHROUGH") or the word before the write ("READBEFOREWRITE");
// * REGMODE "NOREG": DO is the read register; "OUTREG": DO is the output register, which loads
//   the read register at the rising edge while OCE (whatever CE is);
// * RST (RESETMODE "SYNC") clears the read and the output register at the rising edge, over
//   CE and OCE; the memory keeps its contents.
//
// The memory and both registers start at 0 (INITVAL_* all zeros: the state after configuration).
// Not modelled (the simulation stops at a setting other than these): the widths 1, 2, 4 and 9,
// RESETMODE "ASYNC"; ignored: INITVAL contents, the global set/reset (GSR), the polarity muxes
// (*MUX parameters). A collision (both ports on one address at one edge, one writing) is left
// undefined by the data sheet; here a read at that edge gets the word before the write.

`default_nettype none

module DP16KD (
    input wire DIA17, DIA16, DIA15, DIA14, DIA13, DIA12, DIA11, DIA10, DIA9, DIA8, DIA7, DIA6, DIA5, DIA4, DIA3, DIA2, DIA1, DIA0,
    input wire ADA13, ADA12, ADA11, ADA10, ADA9, ADA8, ADA7, ADA6, ADA5, ADA4, ADA3, ADA2, ADA1, ADA0,
    input wire CEA, OCEA, CLKA, WEA, RSTA, CSA2, CSA1, CSA0,
    output wire DOA17, DOA16, DOA15, DOA14, DOA13, DOA12, DOA11, DOA10, DOA9, DOA8, DOA7, DOA6, DOA5, DOA4, DOA3, DOA2, DOA1, DOA0,
    input wire DIB17, DIB16, DIB15, DIB14, DIB13, DIB12, DIB11, DIB10, DIB9, DIB8, DIB7, DIB6, DIB5, DIB4, DIB3, DIB2, DIB1, DIB0,
    input wire ADB13, ADB12, ADB11, ADB10, ADB9, ADB8, ADB7, ADB6, ADB5, ADB4, ADB3, ADB2, ADB1, ADB0,
    input wire CEB, OCEB, CLKB, WEB, RSTB, CSB2, CSB1, CSB0,
    output wire DOB17, DOB16, DOB15, DOB14, DOB13, DOB12, DOB11, DOB10, DOB9, DOB8, DOB7, DOB6, DOB5, DOB4, DOB3, DOB2, DOB1, DOB0
);
    parameter DATA_WIDTH_A = 18;
    parameter DATA_WIDTH_B = 18;
    parameter REGMODE_A = "NOREG";
    parameter REGMODE_B = "NOREG";
    parameter RESETMODE = "SYNC";
    parameter ASYNC_RESET_RELEASE = "SYNC";
    parameter CSDECODE_A = "0b000";
    parameter CSDECODE_B = "0b000";
    parameter WRITEMODE_A = "NORMAL";
    parameter WRITEMODE_B = "NORMAL";
    parameter GSR = "ENABLED";

    // the string parameters decoded (compared with literals of other lengths: zero-extended)
    /* verilator lint_off WIDTHEXPAND */
    localparam OUTREG_A = REGMODE_A == "OUTREG";
    localparam OUTREG_B = REGMODE_B == "OUTREG";
    localparam THROUGH_A = WRITEMODE_A == "WRITETHROUGH";
    localparam THROUGH_B = WRITEMODE_B == "WRITETHROUGH";
    localparam BEFORE_A = WRITEMODE_A == "READBEFOREWRITE";
    localparam BEFORE_B = WRITEMODE_B == "READBEFOREWRITE";
    localparam SYNC = RESETMODE == "SYNC";
    /* verilator lint_on WIDTHEXPAND */

    initial begin
        if (DATA_WIDTH_A != 18 || DATA_WIDTH_B != 18 || !SYNC) begin
            $display("DP16KD model: only DATA_WIDTH_A = DATA_WIDTH_B = 18, RESETMODE \"SYNC\"");
            $finish;
        end
    end

    // a true dual-port memory: written by both ports' processes, each on its own clock
    /* verilator lint_off MULTIDRIVEN */
    reg [17:0] mem [0:1023];
    /* verilator lint_on MULTIDRIVEN */
    integer i;
    initial for (i = 0; i < 1024; i = i + 1) mem[i] = 18'd0;
    // unmodelled settings and the address bits the 18-bit mode ignores
    wire unused_inputs = &{ADA3, ADA2, ADB3, ADB2};
    localparam unused_params = {ASYNC_RESET_RELEASE, GSR} != 0;

    // "0bXYZ": the characters X, Y, Z are the string's three low bytes; '0' / '1' differ in bit 0
    localparam [39:0] CSD_A = CSDECODE_A;
    localparam [39:0] CSD_B = CSDECODE_B;
    localparam [2:0] CS_A = {CSD_A[16], CSD_A[8], CSD_A[0]};
    localparam [2:0] CS_B = {CSD_B[16], CSD_B[8], CSD_B[0]};

    wire [17:0] di_a = {DIA17, DIA16, DIA15, DIA14, DIA13, DIA12, DIA11, DIA10, DIA9, DIA8, DIA7, DIA6, DIA5, DIA4, DIA3, DIA2, DIA1, DIA0};
    wire [17:0] di_b = {DIB17, DIB16, DIB15, DIB14, DIB13, DIB12, DIB11, DIB10, DIB9, DIB8, DIB7, DIB6, DIB5, DIB4, DIB3, DIB2, DIB1, DIB0};
    wire [9:0] addr_a = {ADA13, ADA12, ADA11, ADA10, ADA9, ADA8, ADA7, ADA6, ADA5, ADA4};
    wire [9:0] addr_b = {ADB13, ADB12, ADB11, ADB10, ADB9, ADB8, ADB7, ADB6, ADB5, ADB4};
    wire [1:0] be_a = {ADA1, ADA0};
    wire [1:0] be_b = {ADB1, ADB0};
    wire sel_a = CEA && ({CSA2, CSA1, CSA0} == CS_A);
    wire sel_b = CEB && ({CSB2, CSB1, CSB0} == CS_B);

    // the word after a write of di with byte enables be over old
    function [17:0] merged(input [17:0] old, input [17:0] di, input [1:0] be);
        merged = {be[1] ? di[17:9] : old[17:9], be[0] ? di[8:0] : old[8:0]};
    endfunction

    // the two ports side by side (port p: bit p, or the p-th field), one process each below
    wire [1:0] clk = {CLKB, CLKA};
    wire [1:0] rst = {RSTB, RSTA};
    wire [1:0] oce = {OCEB, OCEA};
    wire [1:0] we = {WEB, WEA};
    wire [1:0] sel = {sel_b, sel_a};
    wire [35:0] di = {di_b, di_a};
    wire [19:0] addr = {addr_b, addr_a};
    wire [3:0] be = {be_b, be_a};
    localparam [1:0] THROUGH = {THROUGH_B, THROUGH_A};
    localparam [1:0] BEFORE = {BEFORE_B, BEFORE_A};
    localparam [1:0] OUTREG = {OUTREG_B, OUTREG_A};

    // the memory is written with nonblocking assignments: both ports' processes read the
    // words before this edge's writes, whatever order the simulator runs them in
    genvar p;
    generate
        for (p = 0; p < 2; p = p + 1) begin : port
            reg [17:0] rd;      // the read register
            reg [17:0] out;     // the output register
            initial begin
                rd = 18'd0;
                out = 18'd0;
            end
            wire [9:0] a = addr[10 * p +: 10];
            wire [17:0] d = di[18 * p +: 18];
            wire [1:0] e = be[2 * p +: 2];
            always @(posedge clk[p]) begin
                if (rst[p]) begin
                    rd <= 18'd0;
                    out <= 18'd0;
                end else begin
                    if (oce[p]) out <= rd;
                    if (sel[p] && we[p]) begin
                        mem[a] <= merged(mem[a], d, e);
                        if (THROUGH[p]) rd <= merged(mem[a], d, e);
                        else if (BEFORE[p]) rd <= mem[a];
                    end else if (sel[p]) begin
                        rd <= mem[a];
                    end
                end
            end
            wire [17:0] dout = OUTREG[p] ? out : rd;
        end
    endgenerate

    assign {DOA17, DOA16, DOA15, DOA14, DOA13, DOA12, DOA11, DOA10, DOA9, DOA8, DOA7, DOA6, DOA5, DOA4, DOA3, DOA2, DOA1, DOA0} = port[0].dout;
    assign {DOB17, DOB16, DOB15, DOB14, DOB13, DOB12, DOB11, DOB10, DOB9, DOB8, DOB7, DOB6, DOB5, DOB4, DOB3, DOB2, DOB1, DOB0} = port[1].dout;
endmodule

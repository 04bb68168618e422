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

    reg [17:0] rd_a, rd_b;      // read registers
    reg [17:0] out_a, out_b;    // output registers
    initial begin
        rd_a = 18'd0;
        rd_b = 18'd0;
        out_a = 18'd0;
        out_b = 18'd0;
    end

    // the word after a write of di with byte enables be over old
    function [17:0] merged(input [17:0] old, input [17:0] di, input [1:0] be);
        merged = {be[1] ? di[17:9] : old[17:9], be[0] ? di[8:0] : old[8:0]};
    endfunction

    // the memory is written with nonblocking assignments: both ports' processes read the
    // words before this edge's writes, whatever order the simulator runs them in
    always @(posedge CLKA) begin
        if (RSTA) begin
            rd_a <= 18'd0;
            out_a <= 18'd0;
        end else begin
            if (OCEA) out_a <= rd_a;
            if (sel_a && WEA) begin
                mem[addr_a] <= merged(mem[addr_a], di_a, be_a);
                if (THROUGH_A) rd_a <= merged(mem[addr_a], di_a, be_a);
                else if (BEFORE_A) rd_a <= mem[addr_a];
            end else if (sel_a) begin
                rd_a <= mem[addr_a];
            end
        end
    end

    always @(posedge CLKB) begin
        if (RSTB) begin
            rd_b <= 18'd0;
            out_b <= 18'd0;
        end else begin
            if (OCEB) out_b <= rd_b;
            if (sel_b && WEB) begin
                mem[addr_b] <= merged(mem[addr_b], di_b, be_b);
                if (THROUGH_B) rd_b <= merged(mem[addr_b], di_b, be_b);
                else if (BEFORE_B) rd_b <= mem[addr_b];
            end else if (sel_b) begin
                rd_b <= mem[addr_b];
            end
        end
    end

    wire [17:0] do_a = OUTREG_A ? out_a : rd_a;
    wire [17:0] do_b = OUTREG_B ? out_b : rd_b;
    assign {DOA17, DOA16, DOA15, DOA14, DOA13, DOA12, DOA11, DOA10, DOA9, DOA8, DOA7, DOA6, DOA5, DOA4, DOA3, DOA2, DOA1, DOA0} = do_a;
    assign {DOB17, DOB16, DOB15, DOB14, DOB13, DOB12, DOB11, DOB10, DOB9, DOB8, DOB7, DOB6, DOB5, DOB4, DOB3, DOB2, DOB1, DOB0} = do_b;
endmodule

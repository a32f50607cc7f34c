// The synthesis and place-and-route workload of the optimisation-level study
// (profiling/levels.sh): LANES lanes of a 16x16 multiply-accumulate (in LUTs: no -dsp),
// a CRC-32 step and an LFSR, registered and folded into eight output pins.
module lane #(parameter SEED = 32'h1) (input clk, input [7:0] in, output [7:0] out);
  reg [31:0] lfsr = SEED;
  reg [31:0] acc = 0;
  reg [31:0] crc = 32'hffffffff;
  reg [15:0] a = 0, b = 0;
  integer i;
  reg [31:0] c;
  always @(posedge clk) begin
    lfsr <= {lfsr[30:0], lfsr[31] ^ lfsr[21] ^ lfsr[1] ^ lfsr[0]};
    a <= lfsr[15:0] ^ {in, in};
    b <= lfsr[31:16] + in;
    acc <= acc + a * b;
    c = crc;
    for (i = 0; i < 8; i = i + 1)
      c = {1'b0, c[31:1]} ^ ((c[0] ^ acc[i]) ? 32'hedb88320 : 32'h0);
    crc <= c;
  end
  assign out = crc[7:0] ^ crc[15:8] ^ acc[31:24];
endmodule

module top #(parameter LANES = 1) (input clk, input [7:0] in, output [7:0] out);
  wire [8*LANES-1:0] outs;
  genvar g;
  generate
    for (g = 0; g < LANES; g = g + 1) begin : l
      wire [7:0] salt = g;
      lane #(.SEED(32'h9e3779b9 * (g + 1))) u (.clk(clk), .in(in ^ salt), .out(outs[8*g +: 8]));
    end
  endgenerate
  reg [7:0] o;
  integer k;
  always @(*) begin
    o = 0;
    for (k = 0; k < LANES; k = k + 1) o = o ^ outs[8*k +: 8];
  end
  assign out = o;
endmodule

// The trivial workload of the level study (start-up): a counter on an LED.
module top(input clk, output led);
  reg [23:0] n = 0;
  always @(posedge clk) n <= n + 1;
  assign led = n[23];
endmodule

; The workload of boolector in the optimisation-level study (profiling/levels.sh): 268435399
; is prime, so no two factors above 1 multiply to it (unsat). Bit-blasting a 28x28-bit
; multiplier and refuting it keeps the SAT solver busy for seconds.
(set-logic QF_BV)
(declare-fun a () (_ BitVec 28))
(declare-fun b () (_ BitVec 28))
(assert (= (bvmul ((_ zero_extend 28) a) ((_ zero_extend 28) b)) (_ bv268435399 56)))
(assert (bvugt a (_ bv1 28)))
(assert (bvugt b (_ bv1 28)))
(check-sat)

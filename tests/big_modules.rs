//! Modules of real programs' size (20+ MB) start under every compile policy, and nothing
//! on their path hangs. Hashing such a module once handed work to a thread pool in a
//! process forked from the pool's owner, where it waited forever: the runner now starts no
//! thread at all, which the last test checks on the runner itself.

mod common;

use std::time::{Duration, Instant};

use common::{containerd, Rootfs, Run};

/// A WASI command of `mb` MiB: a data segment of that size (distinct per `seed`, so each
/// test's module is new to the cache) and a `_start` that exits 0.
fn big_module(mb: usize, seed: u8) -> Vec<u8> {
    use wasm_encoder::{
        CodeSection, ConstExpr, DataSection, ExportKind, ExportSection, Function, FunctionSection,
        Instruction, MemorySection, MemoryType, Module, TypeSection,
    };
    let mut m = Module::new();
    let mut types = TypeSection::new();
    types.ty().function([], []);
    m.section(&types);
    let mut funcs = FunctionSection::new();
    funcs.function(0);
    m.section(&funcs);
    let mut mem = MemorySection::new();
    let pages = ((mb << 20) / 65536 + 1) as u64;
    mem.memory(MemoryType {
        minimum: pages,
        maximum: None,
        memory64: false,
        shared: false,
        page_size_log2: None,
    });
    m.section(&mem);
    let mut exports = ExportSection::new();
    exports.export("_start", ExportKind::Func, 0);
    exports.export("memory", ExportKind::Memory, 0);
    m.section(&exports);
    let mut code = CodeSection::new();
    let mut f = Function::new([]);
    f.instruction(&Instruction::End);
    code.function(&f);
    m.section(&code);
    let mut data = DataSection::new();
    let bytes: Vec<u8> = (0..mb << 20).map(|i| (i as u8) ^ seed).collect();
    data.active(0, &ConstExpr::i32_const(0), bytes);
    m.section(&data);
    m.finish()
}

fn rootfs_with(module: &[u8]) -> Rootfs {
    let r = Rootfs::with(&[]);
    std::fs::write(r.path().join("big.wasm"), module).unwrap();
    r
}

fn seed(tag: u8) -> u8 {
    (std::process::id() as u8) ^ tag.wrapping_mul(37)
}

#[test]
fn a_module_of_20_mb_starts_under_every_policy_without_hanging() {
    if !common::can_run("big_modules_every_policy") {
        return;
    }
    let ctd = containerd();
    for (i, policy) in ["sync", "tiered", "auto", "off"].into_iter().enumerate() {
        let r = rootfs_with(&big_module(24, seed(i as u8)));
        let mut run = Run::rootfs(&format!("big-{policy}"), r.path(), &["/big.wasm"]);
        run.annotations = vec![format!("wasmedge-aot-shim.io/compile-policy={policy}")];
        run.timeout = Some(Duration::from_secs(300));
        let t = Instant::now();
        let out = ctd.run(&run);
        assert_eq!(out.code, Some(0), "{policy}: {out:?}");
        eprintln!(
            "{policy}: 24 MiB module started and exited in {:?}",
            t.elapsed()
        );
    }
}

#[test]
fn a_module_rewritten_just_before_its_start_runs() {
    if !common::can_run("big_module_just_touched") {
        return;
    }
    let ctd = containerd();
    let module = big_module(20, seed(99));
    let r = rootfs_with(&module);
    for attempt in 0..3 {
        // Rewritten a moment before: its identity is too fresh for the hash memo.
        std::fs::write(r.path().join("big.wasm"), &module).unwrap();
        let mut run = Run::rootfs(&format!("big-touched-{attempt}"), r.path(), &["/big.wasm"]);
        run.timeout = Some(Duration::from_secs(300));
        let out = ctd.run(&run);
        assert_eq!(out.code, Some(0), "attempt {attempt}: {out:?}");
    }
}

#[test]
fn the_runner_never_starts_a_thread() {
    if !common::can_run("runner_single_threaded") {
        return;
    }
    let ctd = containerd();
    let r = rootfs_with(&big_module(20, seed(7)));
    let mut run = Run::rootfs("big-threads", r.path(), &["/big.wasm"]);
    run.annotations = vec!["wasmedge-aot-shim.io/compile-policy=tiered".into()];
    run.timeout = Some(Duration::from_secs(300));
    assert_eq!(ctd.run(&run).code, Some(0));
    // A running container of the same shim leads us to the runner.
    let sleeper = common::unique_probe("threads");
    ctd.run_detached(&Run::rootfs(
        "big-threads-sleeper",
        sleeper.path(),
        &["/probe.wasm", "sleep", "30"],
    ));
    ctd.wait_status("big-threads-sleeper", "RUNNING", Duration::from_secs(60));
    let task = ctd.task_pid("big-threads-sleeper").unwrap();
    let shim = common::ppid(task).unwrap();
    let runner = common::runner_of(shim).expect("the shim's runner");
    let status = std::fs::read_to_string(format!("/proc/{runner}/status")).unwrap();
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .map(str::trim);
    ctd.remove("big-threads-sleeper");
    assert_eq!(threads, Some("1"), "threads of the runner {runner}");
}

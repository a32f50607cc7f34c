//! Benchmarks of the AOT cache's hot paths: module hashing (single-threaded vs rayon, to pick
//! `RAYON_THRESHOLD`), a warm lookup through the hash memo (target: at most 50 µs), and the
//! overhead of taking and releasing a per-key lock.
//!
//! `cargo bench --bench cache -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use wasmedge_aot_cache::{
    BoxError, Cache, CacheConfig, Compiler, Fingerprint, ModuleHash, Outcome, MEMO_RACY_WINDOW,
};

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

fn data(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

fn hashing(c: &mut Criterion) {
    let mut g = c.benchmark_group("hash");
    for size in [64 * KIB, 256 * KIB, MIB, 16 * MIB, 64 * MIB] {
        let input = data(size);
        g.throughput(Throughput::Bytes(size as u64));
        if size >= 16 * MIB {
            g.sample_size(10);
        }
        g.bench_with_input(BenchmarkId::new("single", size), &input, |b, d| {
            b.iter(|| ModuleHash::of_bytes_single(black_box(d)))
        });
        g.bench_with_input(BenchmarkId::new("rayon", size), &input, |b, d| {
            b.iter(|| ModuleHash::of_bytes_rayon(black_box(d)))
        });
    }
    g.finish();
}

struct CopyCompiler;

impl Compiler for CopyCompiler {
    fn compile(&self, module: &Path, out: &Path) -> Result<(), BoxError> {
        std::fs::copy(module, out)?;
        Ok(())
    }
}

fn fingerprint() -> Fingerprint {
    Fingerprint {
        engine: "wasmedge".into(),
        engine_version: "0.14.0".into(),
        aot_format_version: 1,
        target: "x86_64-unknown-linux-gnu".into(),
        options: vec![("opt-level".into(), "O2".into())],
        cpu_features: vec!["avx2".into()],
    }
}

fn warm_lookup(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let module = dir.path().join("module.wasm");
    std::fs::write(&module, data(4 * MIB)).expect("write module");
    // Let the module's ctime age past the racy window so the memo records it.
    std::thread::sleep(MEMO_RACY_WINDOW + Duration::from_millis(50));
    let cache = Cache::open(CacheConfig::new(dir.path().join("cache"))).expect("open cache");
    let fp = fingerprint();
    let first = cache
        .get_or_compile(&module, &fp, &CopyCompiler)
        .expect("compile");
    assert_eq!(first.outcome, Outcome::Compiled);
    let key = first.artifact.key;

    let mut g = c.benchmark_group("warm");
    g.bench_function("get_or_compile_hit_4MiB_module", |b| {
        b.iter(|| {
            let r = cache
                .get_or_compile(black_box(&module), &fp, &CopyCompiler)
                .expect("hit");
            debug_assert!(r.from_memo && r.outcome == Outcome::Hit);
            r
        })
    });
    g.bench_function("lookup_by_key", |b| {
        b.iter(|| cache.lookup(black_box(&key)).expect("lookup"))
    });
    g.bench_function("key_for_memo_hit", |b| {
        b.iter(|| cache.key_for(black_box(&module), &fp).expect("key"))
    });
    // What a new process pays on its first use of the entry: the full digest of the artifact.
    g.bench_function("first_use_in_new_process_4MiB_artifact", |b| {
        let root = dir.path().join("cache");
        b.iter(|| {
            let fresh = Cache::open(CacheConfig::new(&root)).expect("open");
            fresh
                .get_or_compile(&module, &fp, &CopyCompiler)
                .expect("hit")
        })
    });
    g.finish();
}

fn locking(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = Cache::open(CacheConfig::new(dir.path().join("cache"))).expect("open cache");
    let key = fingerprint_key();
    drop(cache.lock_key(&key).expect("create lock file"));
    c.bench_function("lock/acquire_release_uncontended", |b| {
        b.iter(|| drop(cache.lock_key(black_box(&key)).expect("lock")))
    });
}

fn fingerprint_key() -> wasmedge_aot_cache::Key {
    wasmedge_aot_cache::Key::derive(&ModuleHash::of_bytes(b"bench"), &fingerprint())
}

criterion_group!(benches, hashing, warm_lookup, locking);
criterion_main!(benches);

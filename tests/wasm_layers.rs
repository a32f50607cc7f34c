//! Images whose module is a layer of its own (runwasi's layout: an image config with platform
//! `wasip1/wasm`, no tar layer, the module as a layer of media type
//! `application/vnd.bytecodealliance.wasm.component.layer.v0+wasm`), built with the admin
//! tool's image builder, imported into the containerd under test and run through `ctr run`:
//! containerd gives such a container an empty rootfs, and the shim reads the module from
//! containerd's content store.

mod common;

use common::images::{self, archive, ctr_raw, Archive};
use common::{containerd, create_outcome, fixture, unique_probe, Containerd, Rootfs, Run};
use wasmedge_shimctl::image::{ImageBuilder, Platform};

/// A copy of probe.wasm no other test runs (its own cache key), as a Wasm-layer image.
fn unique_layer_image(tag: &str) -> (Archive, Vec<u8>) {
    let module = std::fs::read(unique_probe(tag).path().join("probe.wasm")).unwrap();
    let reference = format!("localhost/wasmedge-tests/layer-{tag}:v1");
    let a = archive(
        &format!("layer-{tag}.tar"),
        ImageBuilder::wasm_layer(&reference, module.clone()),
    );
    (a, module)
}

fn outcome(ctd: &Containerd, id: &str) -> (String, String) {
    create_outcome(&ctd.log(), id)
        .unwrap_or_else(|| panic!("no create line for {id}\n{}", ctd.log_tail()))
}

#[test]
fn a_wasm_layer_image_runs_its_layer_and_starts_warm_from_the_cache() {
    if !common::can_run("wasm_layer_runs") {
        return;
    }
    let ctd = containerd();
    let (image, _) = unique_layer_image("runs");
    ctd.import_image(&image);

    // The image's entrypoint, /app.wasm, is in no rootfs: the layer is the module.
    let first = ctd.run(&Run::image("layer-first", &image.reference, &[]));
    assert_eq!(
        (first.code, first.stdout.as_str(), first.stderr.as_str()),
        (Some(0), "hello from wasm\n", ""),
        "{}",
        ctd.log_tail()
    );
    assert_eq!(
        outcome(ctd, "layer-first"),
        ("compiled".into(), "native".into())
    );

    // Warm: native code from the cache, the exit code is the module's, argv as given.
    let warm = ctd.run(&Run::image(
        "layer-warm",
        &image.reference,
        &["/app.wasm", "exit", "7"],
    ));
    assert_eq!(warm.code, Some(7), "{warm:?}");
    assert_eq!(outcome(ctd, "layer-warm"), ("hit".into(), "native".into()));
    let args = ctd.run(&Run::image(
        "layer-args",
        &image.reference,
        &["app.wasm", "args", "a b"],
    ));
    assert_eq!(args.stdout, "app.wasm\nargs\na b\n", "{args:?}");

    // The shim read the layer from containerd once; later starts took its copy and hash.
    let reads = ctd
        .log()
        .lines()
        .filter(|l| l.contains(&format!("from Wasm layer {}", image.layer_digest)))
        .count();
    assert_eq!(reads, 1, "{}", ctd.log_tail());
}

#[test]
fn a_module_has_one_cache_entry_whether_its_image_is_plain_or_a_wasm_layer() {
    if !common::can_run("wasm_layer_same_key") {
        return;
    }
    let ctd = containerd();
    let (layered, module) = unique_layer_image("same-key");
    let plain = archive(
        "layer-same-key-plain.tar",
        ImageBuilder::image("localhost/wasmedge-tests/layer-same-key:plain")
            .module("/app.wasm", module),
    );
    ctd.import_image(&plain);
    ctd.import_image(&layered);
    let out = ctd.run(&Run::image("same-key-plain", &plain.reference, &[]));
    assert_eq!(out.stdout, "hello from wasm\n", "{out:?}");
    assert_eq!(
        outcome(ctd, "same-key-plain"),
        ("compiled".into(), "native".into())
    );
    // The layer's bytes hash (blake3, by the shim) to what the file's did (by the runner).
    let out = ctd.run(&Run::image("same-key-layer", &layered.reference, &[]));
    assert_eq!(out.stdout, "hello from wasm\n", "{out:?}");
    assert_eq!(
        outcome(ctd, "same-key-layer"),
        ("hit".into(), "native".into())
    );
}

#[test]
fn precompile_image_compiles_the_layer_a_container_then_hits() {
    if !common::can_run("wasm_layer_precompile") {
        return;
    }
    let ctd = containerd();
    let (image, _) = unique_layer_image("precompile");
    ctd.import_image(&image);
    // `ctr images export` of the containerd under test: its own ctr first on PATH.
    let path = format!(
        "{}:{}",
        common::containerd_binary().bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = std::process::Command::new(common::shimctl_bin())
        .args(["precompile", "--image", &image.reference, "--address"])
        .arg(&ctd.address)
        .args(["-n", common::namespace(), "--cache-dir"])
        .arg(&ctd.cache_dir)
        .env("PATH", path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = ctd.run(&Run::image("layer-precompiled", &image.reference, &[]));
    assert_eq!(run.stdout, "hello from wasm\n", "{run:?}");
    assert_eq!(
        outcome(ctd, "layer-precompiled"),
        ("hit".into(), "native".into())
    );
}

#[test]
fn a_module_in_neither_rootfs_nor_layer_fails_the_create_with_the_reason() {
    if !common::can_run("wasm_layer_errors") {
        return;
    }
    let ctd = containerd();
    let fails = |id: &str, image: Option<&str>, rootfs: Option<&Rootfs>, needle: &str| {
        let run = match (image, rootfs) {
            (Some(image), _) => Run::image(id, image, &["/app.wasm"]),
            (None, Some(r)) => Run::rootfs(id, r.path(), &["/app.wasm"]),
            (None, None) => unreachable!(),
        };
        let out = ctd.run(&run);
        assert_ne!(out.code, Some(0), "{id}: {out:?}");
        assert!(out.stderr.contains(needle), "{id}: {}", out.stderr);
        ctd.remove(id);
    };
    // A layer that is no Wasm module.
    let text = archive(
        "layer-not-wasm.tar",
        ImageBuilder::wasm_layer(
            "localhost/wasmedge-tests/layer-not-wasm:v1",
            std::fs::read(fixture("not-wasm.txt")).unwrap(),
        ),
    );
    ctd.import_image(&text);
    fails(
        "layer-not-wasm",
        Some(&text.reference),
        None,
        "/app.wasm is not a wasm module (no \\0asm magic)",
    );
    // Its next container costs no read: the shim remembers the layer is no module.
    fails(
        "layer-not-wasm-again",
        Some(&text.reference),
        None,
        "is no Wasm module (no \\0asm magic, read before)",
    );
    // A plain image without the file and without a Wasm layer: a Linux container, whose
    // entrypoint runc looks for and does not find.
    let probe = images::probe_image();
    ctd.import_image(&probe);
    let run = Run::image("layer-none", &probe.reference, &["/missing.wasm"]);
    let out = ctd.run(&run);
    assert_ne!(out.code, Some(0), "{out:?}");
    assert!(
        out.stderr
            .contains("exec: \"/missing.wasm\": stat /missing.wasm: no such file or directory"),
        "{}",
        out.stderr
    );
    ctd.remove("layer-none");
    // A Wasm layer under a Linux image's config (someone's manifest adding a module to a
    // Linux image, which CRI may name by the Linux image's tag): never run, the container
    // is runc's.
    let linux_config = archive(
        "layer-linux-config.tar",
        ImageBuilder::wasm_layer(
            "localhost/wasmedge-tests/layer-linux-config:v1",
            std::fs::read(fixture("probe.wasm")).unwrap(),
        )
        .platform(Platform::linux_amd64()),
    );
    ctd.import_image(&linux_config);
    fails(
        "layer-linux-config",
        Some(&linux_config.reference),
        None,
        "exec: \"/app.wasm\": stat /app.wasm: no such file or directory",
    );
    // A container made from a directory has no image to read a layer of: the same.
    let empty = Rootfs::with(&[]);
    fails(
        "layer-no-image",
        None,
        Some(&empty),
        "exec: \"/app.wasm\": stat /app.wasm: no such file or directory",
    );
    // The shim serves the next container as before.
    let ok = ctd.run(&Run::image("layer-after", &probe.reference, &[]));
    assert_eq!(ok.stdout, "hello from wasm\n", "{ok:?}");
    let (code, _, _) = ctr_raw(ctd, &["version"]);
    assert_eq!(code, Some(0));
}

/// `wasm_layers = "labelled"`, the default: a node runs the layers only of images whose
/// config names them; runwasi's unlabelled layout, whose config binds no module to the
/// image (another party's image with the same config is the same image to CRI), is refused
/// at create, naming the setting. `any` runs it; `off` runs none: the container is a Linux
/// one.
#[test]
fn a_node_can_run_only_labelled_wasm_layer_images_or_none() {
    if !common::can_run("wasm_layer_modes") {
        return;
    }
    let module = std::fs::read(unique_probe("modes").path().join("probe.wasm")).unwrap();
    let labelled = archive(
        "layer-labelled.tar",
        ImageBuilder::wasm_layer("localhost/wasmedge-tests/layer-labelled:v1", module.clone()),
    );
    let unlabelled = archive(
        "layer-unlabelled.tar",
        ImageBuilder::wasm_layer("localhost/wasmedge-tests/layer-unlabelled:v1", module)
            .without_layers_label(),
    );
    let shared = containerd();
    let refused = "its config names no Wasm layer (label io.wasmedge-aot-shim.wasm-layers), \
                   and this node runs only images whose configs do (wasm_layers = \"labelled\")";
    for (mode, labelled_runs, unlabelled_error) in [
        ("labelled", true, refused),
        (
            "off",
            false,
            "exec: \"/app.wasm\": stat /app.wasm: no such file or directory",
        ),
    ] {
        let ctd = Containerd::start_with(
            false,
            &format!(
                "cache_dir = \"{}\"\nwasm_layers = \"{mode}\"\n",
                shared.cache_dir.display()
            ),
        );
        ctd.import_image(&labelled);
        ctd.import_image(&unlabelled);
        let out = ctd.run(&Run::image(&format!("{mode}-l"), &labelled.reference, &[]));
        if labelled_runs {
            assert_eq!(out.stdout, "hello from wasm\n", "{mode}: {out:?}");
        } else {
            assert_ne!(out.code, Some(0), "{mode}: {out:?}");
            assert!(out.stderr.contains(unlabelled_error), "{mode}: {out:?}");
        }
        let out = ctd.run(&Run::image(
            &format!("{mode}-u"),
            &unlabelled.reference,
            &[],
        ));
        assert_ne!(out.code, Some(0), "{mode}: {out:?}");
        assert!(out.stderr.contains(unlabelled_error), "{mode}: {out:?}");
    }
    // `any` runs both (runwasi's images included).
    let any = Containerd::start_with(
        false,
        &format!(
            "cache_dir = \"{}\"\nwasm_layers = \"any\"\n",
            shared.cache_dir.display()
        ),
    );
    any.import_image(&unlabelled);
    let out = any.run(&Run::image("any-u", &unlabelled.reference, &[]));
    assert_eq!(out.stdout, "hello from wasm\n", "{out:?}");
    // The default config refuses the unlabelled image.
    shared.import_image(&unlabelled);
    let out = shared.run(&Run::image("default-u", &unlabelled.reference, &[]));
    shared.remove("default-u");
    assert_ne!(
        out.code,
        Some(0),
        "the default ran an unlabelled image: {out:?}"
    );
    assert!(out.stderr.contains(refused), "{out:?}");
}

//! Images whose module is a layer of its own (a *Wasm layer*), as runwasi builds them: an
//! ordinary image config (platform `wasip1/wasm`, no `rootfs.diff_ids`) and layers that are
//! the raw module bytes, of media type [`COMPONENT_LAYER`] or [`WASM_LAYER`]. containerd
//! stores them in its content store and unpacks no rootfs from them (they are not tar
//! layers): a container of such an image starts with an empty rootfs.
//!
//! The shim runs the module of such a container from containerd's content store, and
//! `wasmedge-shimctl precompile --image` compiles the same module: both pick it with
//! [`select`], here, so that the entry a precompile makes is the one the first container
//! hits.
//!
//! The rule, for a container whose `process.args[0]` is not a file in its rootfs:
//!
//! 1. the image's Wasm layers are its layers of either media type, in manifest order;
//! 2. one Wasm layer: that is the module (whatever argv[0] says; argv[0] is still the
//!    module's `argv[0]`, as runwasi does);
//! 3. several: the one whose `org.opencontainers.image.title` annotation is argv[0]'s file
//!    name; none or several such: an error naming the layers.
//!
//! A module that argv[0] names in the rootfs always wins: a plain image (or a Wasm-layer
//! image that also ships files) keeps argv[0]'s meaning.
//!
//! And two conditions, because containerd's CRI plugin knows an image by its config's digest
//! and merges every image whose config has that digest under one name, whose manifest (and
//! so whose layers) may be another party's ([`bound`]):
//!
//! 4. only an image whose config is a Wasm platform's (architecture `wasm`) has its Wasm
//!    layers run: a Linux image's config never does, so a manifest that adds a Wasm layer to
//!    a Linux image's config and layers cannot turn that image's containers into a module;
//! 5. a config that names its Wasm layers ([`LAYERS_LABEL`], which `wasmedge-shimctl image
//!    build` writes) only ever runs one of those: a manifest with another layer under the
//!    same config is refused.

use serde::{Deserialize, Serialize};

/// The layer media type runwasi's `oci-tar-builder` writes (a Wasm module or component).
pub const COMPONENT_LAYER: &str = "application/vnd.bytecodealliance.wasm.component.layer.v0+wasm";
/// The layer media type of the CNCF Wasm OCI artifact (also used in plain image manifests).
pub const WASM_LAYER: &str = "application/wasm";
/// The layer annotation that names a layer's file (OCI image spec, pre-defined keys).
pub const TITLE_ANNOTATION: &str = "org.opencontainers.image.title";
/// The image config label naming, comma-separated, the digests (`sha256:<hex>`) of the
/// image's Wasm layers: it binds the config, which is the image's identity in CRI, to its
/// modules, and makes the configs of two images with different modules differ.
pub const LAYERS_LABEL: &str = "io.wasmedge-aot-shim.wasm-layers";
/// The architecture of a Wasm image's config (platform `wasip1/wasm`, `wasi/wasm`).
pub const WASM_ARCHITECTURE: &str = "wasm";

/// Whether a layer of `media_type` is a Wasm module itself (not a tar of files).
pub fn is_wasm_layer(media_type: &str) -> bool {
    media_type == COMPONENT_LAYER || media_type == WASM_LAYER
}

/// A layer of an image manifest as [`select`] needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layer {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    /// Its [`TITLE_ANNOTATION`], if any.
    pub title: Option<String>,
}

/// Why no module could be picked from an image's layers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    #[error("the image has no Wasm layer (media type {COMPONENT_LAYER} or {WASM_LAYER})")]
    NoWasmLayer,
    #[error(
        "the image has {count} Wasm layers and none or several are titled {name:?} \
         (annotation {TITLE_ANNOTATION}); their digests: {digests}"
    )]
    Ambiguous {
        count: usize,
        name: String,
        digests: String,
    },
    #[error(
        "its config is for architecture {architecture:?}, not {WASM_ARCHITECTURE:?}: its Wasm \
         layers are not run"
    )]
    NotWasmPlatform { architecture: String },
    #[error(
        "Wasm layer {digest} is not one its config names (label {LAYERS_LABEL}: {named}): \
         another image's manifest under the same config?"
    )]
    NotNamedByConfig { digest: String, named: String },
    #[error(
        "its config names no Wasm layer (label {LAYERS_LABEL}), and this node runs only \
         images whose configs do (wasm_layers = \"labelled\")"
    )]
    Unlabelled,
}

/// What [`bound`] needs of an image config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    pub architecture: String,
    /// Its [`LAYERS_LABEL`], if any.
    pub layers_label: Option<String>,
}

/// The index in `layers` of the module a container with `argv0` runs, for an image whose
/// config is `config`: [`select`], then rules 4 and 5 of the module docs.
///
/// With `require_label`, a config without [`LAYERS_LABEL`] runs none of its layers.
pub fn bound(
    layers: &[Layer],
    argv0: &str,
    config: &ImageConfig,
    require_label: bool,
) -> Result<usize, SelectError> {
    let chosen = select(layers, argv0)?;
    if config.architecture != WASM_ARCHITECTURE {
        return Err(SelectError::NotWasmPlatform {
            architecture: config.architecture.clone(),
        });
    }
    if require_label && config.layers_label.is_none() {
        return Err(SelectError::Unlabelled);
    }
    if let Some(named) = &config.layers_label {
        let digest = &layers[chosen].digest;
        if !named.split(',').any(|d| d.trim() == digest) {
            return Err(SelectError::NotNamedByConfig {
                digest: digest.clone(),
                named: named.clone(),
            });
        }
    }
    Ok(chosen)
}

/// The index in `layers` of the module a container with `argv0` runs (see the module docs).
pub fn select(layers: &[Layer], argv0: &str) -> Result<usize, SelectError> {
    let wasm: Vec<usize> = (0..layers.len())
        .filter(|&i| is_wasm_layer(&layers[i].media_type))
        .collect();
    match wasm.as_slice() {
        [] => Err(SelectError::NoWasmLayer),
        [one] => Ok(*one),
        several => {
            let name = argv0.rsplit('/').next().unwrap_or(argv0);
            let titled: Vec<usize> = several
                .iter()
                .copied()
                .filter(|&i| layers[i].title.as_deref() == Some(name))
                .collect();
            match titled.as_slice() {
                [one] => Ok(*one),
                _ => Err(SelectError::Ambiguous {
                    count: several.len(),
                    name: name.to_string(),
                    digests: several
                        .iter()
                        .map(|&i| layers[i].digest.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(media_type: &str, digest: &str, title: Option<&str>) -> Layer {
        Layer {
            media_type: media_type.into(),
            digest: digest.into(),
            size: 1,
            title: title.map(Into::into),
        }
    }

    #[test]
    fn one_wasm_layer_is_the_module_whatever_argv0_says() {
        let layers = [
            layer("application/vnd.oci.image.layer.v1.tar", "sha256:t", None),
            layer(COMPONENT_LAYER, "sha256:m", Some("other.wasm")),
        ];
        assert_eq!(select(&layers, "/app.wasm"), Ok(1));
        assert_eq!(select(&layers, ""), Ok(1));
        assert_eq!(select(&[layer(WASM_LAYER, "sha256:a", None)], "x"), Ok(0));
    }

    #[test]
    fn several_wasm_layers_are_told_apart_by_title() {
        let layers = [
            layer(WASM_LAYER, "sha256:a", Some("a.wasm")),
            layer(COMPONENT_LAYER, "sha256:b", Some("b.wasm")),
        ];
        assert_eq!(select(&layers, "/bin/b.wasm"), Ok(1));
        assert_eq!(select(&layers, "a.wasm"), Ok(0));
        let e = select(&layers, "c.wasm").unwrap_err();
        assert_eq!(
            e.to_string(),
            "the image has 2 Wasm layers and none or several are titled \"c.wasm\" \
             (annotation org.opencontainers.image.title); their digests: sha256:a, sha256:b"
        );
    }

    #[test]
    fn only_a_wasm_config_runs_layers_and_only_those_its_label_names() {
        let layers = [
            layer("application/vnd.oci.image.layer.v1.tar", "sha256:t", None),
            layer(COMPONENT_LAYER, "sha256:m", None),
        ];
        let wasm = |label: Option<&str>| ImageConfig {
            architecture: "wasm".into(),
            layers_label: label.map(Into::into),
        };
        assert_eq!(bound(&layers, "/app.wasm", &wasm(None), false), Ok(1));
        assert_eq!(
            bound(&layers, "/app.wasm", &wasm(Some("sha256:m")), true),
            Ok(1)
        );
        assert_eq!(
            bound(
                &layers,
                "/app.wasm",
                &wasm(Some("sha256:x, sha256:m")),
                false
            ),
            Ok(1)
        );
        assert_eq!(
            bound(&layers, "/app.wasm", &wasm(Some("sha256:x")), false),
            Err(SelectError::NotNamedByConfig {
                digest: "sha256:m".into(),
                named: "sha256:x".into()
            })
        );
        // A Linux image's config with a Wasm layer added to its manifest.
        let linux = ImageConfig {
            architecture: "amd64".into(),
            layers_label: None,
        };
        assert_eq!(
            bound(&layers, "envoy", &linux, false),
            Err(SelectError::NotWasmPlatform {
                architecture: "amd64".into()
            })
        );
        // A node that runs only labelled images.
        assert_eq!(
            bound(&layers, "/app.wasm", &wasm(None), true),
            Err(SelectError::Unlabelled)
        );
        // No Wasm layer stays that, whatever the config.
        assert_eq!(
            bound(&layers[..1], "/app.wasm", &wasm(None), false),
            Err(SelectError::NoWasmLayer)
        );
    }

    #[test]
    fn tar_layers_are_not_modules() {
        let layers = [layer(
            "application/vnd.oci.image.layer.v1.tar+gzip",
            "sha256:t",
            None,
        )];
        assert_eq!(select(&layers, "/app.wasm"), Err(SelectError::NoWasmLayer));
        assert!(!is_wasm_layer("application/vnd.wasm.config.v0+json"));
    }
}

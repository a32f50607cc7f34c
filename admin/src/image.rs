//! OCI image archives, built without a registry or a daemon: `wasmedge-shimctl image build`
//! (for operators and the demo), the images of the integration tests, and the reading of an
//! exported image that `wasmedge-shimctl precompile --image` does.
//!
//! [`ImageBuilder`] writes an [OCI image layout] (`oci-layout`, `index.json`,
//! `blobs/sha256/<hex>`) into one tar file that `ctr images import` of containerd 1.7 accepts.
//! It builds two forms:
//!
//! * **Plain image** ([`ImageBuilder::image`]): one uncompressed layer
//!   (`application/vnd.oci.image.layer.v1.tar`) holding the module and any extra files, an
//!   `application/vnd.oci.image.config.v1+json` config whose `Entrypoint` is the module's path,
//!   and the platform `wasip1/wasm` (or `linux/amd64` for a native baseline image). containerd
//!   unpacks it into a snapshot like any other image.
//! * **Wasm-layer image** ([`ImageBuilder::wasm_layer`]), as runwasi's `oci-tar-builder`
//!   writes them: an ordinary `application/vnd.oci.image.config.v1+json` config (platform
//!   `wasip1/wasm`, `Entrypoint` the module's path, no `rootfs.diff_ids`) and one layer that is
//!   the raw module, of media type
//!   `application/vnd.bytecodealliance.wasm.component.layer.v0+wasm` (or `application/wasm`,
//!   [`ImageBuilder::layer_media_type`]), titled with the module's file name. containerd
//!   creates its containers with an empty rootfs; the shim runs the layer, read from the
//!   content store (`wasmedge_aot_protocol::wasm_layer`).
//! * **Wasm artifact** ([`ImageBuilder::artifact`]), per the CNCF TAG-runtime
//!   wasm-oci-artifact spec: one `application/wasm` layer holding the raw module bytes and an
//!   `application/vnd.wasm.config.v0+json` config ([`WasmConfig`]). containerd stores it but
//!   cannot unpack it into a snapshot: a runtime has to read the layer from the content store.
//!
//! Output is deterministic: fixed timestamps (`created` defaults to the Unix epoch), owner
//! 0:0, tar entries sorted by path, JSON objects with sorted keys. The same inputs give the
//! same bytes and therefore the same digests.
//!
//! `index.json` names the manifest with `org.opencontainers.image.ref.name` (the tag, as the
//! OCI layout spec has it) and `io.containerd.image.name` (the full reference), which
//! `ctr images import` lists the image under.
//!
//! [`Archive`] reads such a layout back (ours, or what `ctr images export` writes) and finds
//! an image's module as the shim would: the file its config's `Entrypoint` names in the tar
//! layers, else the Wasm layer `wasm_layer::bound` picks (of a Wasm-layer image or an
//! artifact).
//!
//! [OCI image layout]: https://github.com/opencontainers/image-spec/blob/main/image-layout.md

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Component, Path};

use oci_spec::image::{
    Arch, ConfigBuilder, Descriptor, DescriptorBuilder, Digest, ImageConfigurationBuilder,
    ImageIndexBuilder, ImageManifestBuilder, MediaType, OciLayoutBuilder, Os, PlatformBuilder,
    RootFsBuilder, ANNOTATION_REF_NAME,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use wasmedge_aot_protocol::wasm_layer::{self, TITLE_ANNOTATION};

/// Media type of the layer of a Wasm artifact: the raw module bytes.
pub const WASM_LAYER_MEDIA_TYPE: &str = wasm_layer::WASM_LAYER;
/// Media type of the module layer of a Wasm-layer image, by default (runwasi's).
pub const COMPONENT_LAYER_MEDIA_TYPE: &str = wasm_layer::COMPONENT_LAYER;
/// The label that makes the config of a Wasm-layer image unique to its module and binds it
/// to it: without files in `rootfs.diff_ids`, two such images would share one config, and
/// the CRI plugin names an image by its config's digest; the shim runs only a layer the
/// label names (`wasm_layer::bound`).
pub const WASM_LAYERS_LABEL: &str = wasm_layer::LAYERS_LABEL;
/// Media type of the config of a Wasm artifact.
pub const WASM_CONFIG_MEDIA_TYPE: &str = "application/vnd.wasm.config.v0+json";
/// The annotation `ctr images import` takes the image name from.
pub const ANNOTATION_CONTAINERD_IMAGE_NAME: &str = "io.containerd.image.name";
/// `created` of every config unless set otherwise: builds are reproducible.
pub const EPOCH: &str = "1970-01-01T00:00:00Z";

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("invalid image path {0:?}: must be absolute, without `..`")]
    Path(String),
    #[error("invalid platform {0:?}: expected OS/ARCH, e.g. wasip1/wasm or linux/amd64")]
    Platform(String),
    #[error("invalid reference {0:?}: expected NAME:TAG or NAME@DIGEST")]
    Reference(String),
    #[error("image has no entrypoint: give a module or an entrypoint")]
    NoEntrypoint,
    #[error("two files at {0}")]
    Duplicate(String),
    #[error("image archive: {0}")]
    Archive(String),
    #[error("oci-spec error: {0}")]
    Spec(#[from] oci_spec::OciSpecError),
    #[error("json error: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{context} error: {err}")]
    Io {
        context: String,
        #[source]
        err: std::io::Error,
    },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ImageError {
    let context = context.into();
    move |err| ImageError::Io { context, err }
}

pub type Result<T, E = ImageError> = std::result::Result<T, E>;

/// An image's OS/architecture, as written in its config and its index descriptor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub arch: String,
}

impl Platform {
    /// `wasip1/wasm`: a WASI preview 1 module.
    pub fn wasip1() -> Platform {
        Platform {
            os: "wasip1".into(),
            arch: "wasm".into(),
        }
    }

    /// `linux/amd64`: the native baseline image for runc.
    pub fn linux_amd64() -> Platform {
        Platform {
            os: "linux".into(),
            arch: "amd64".into(),
        }
    }

    /// Whether this is a wasm platform (arch `wasm`).
    pub fn is_wasm(&self) -> bool {
        self.arch == "wasm"
    }
}

impl std::str::FromStr for Platform {
    type Err = ImageError;

    fn from_str(s: &str) -> Result<Platform> {
        match s.split_once('/') {
            Some((os, arch)) if !os.is_empty() && !arch.is_empty() && !arch.contains('/') => {
                Ok(Platform {
                    os: os.into(),
                    arch: arch.into(),
                })
            }
            _ => Err(ImageError::Platform(s.into())),
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)
    }
}

/// The config blob of a Wasm artifact (`application/vnd.wasm.config.v0+json`), with the
/// fields of the CNCF wasm-oci-artifact spec. `component` is for wasip2 components only and
/// left out for modules.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WasmConfig {
    pub created: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    pub architecture: String,
    pub os: String,
    pub layer_digests: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub component: Option<serde_json::Value>,
}

/// The form of an image archive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// A plain OCI image with a tar layer: containerd unpacks it into a rootfs.
    Image,
    /// An OCI image config whose layers are Wasm modules (runwasi's layout).
    WasmLayer,
    /// A CNCF Wasm OCI artifact with an `application/wasm` layer.
    Artifact,
}

impl Form {
    /// As `image build --json` reports it.
    pub fn name(self) -> &'static str {
        match self {
            Form::Image => "image",
            Form::WasmLayer => "wasm-layer",
            Form::Artifact => "artifact",
        }
    }
}

/// A file in the rootfs of a plain image.
#[derive(Clone, Debug)]
struct File {
    contents: Vec<u8>,
    mode: u32,
}

/// Builds an image archive; see the module docs.
#[derive(Clone, Debug)]
pub struct ImageBuilder {
    reference: String,
    form: Form,
    platform: Platform,
    module: Option<(String, Vec<u8>)>,
    files: BTreeMap<String, File>,
    entrypoint: Option<Vec<String>>,
    env: Vec<String>,
    created: String,
    author: Option<String>,
    /// The module layer's media type (Wasm-layer form).
    layer_media_type: String,
    /// Whether a Wasm-layer image's config names its layer (`WASM_LAYERS_LABEL`).
    layers_label: bool,
}

/// A built image: its blobs and the names of its parts.
#[derive(Clone, Debug)]
pub struct Layout {
    pub reference: String,
    pub form: Form,
    /// Digest of the image manifest: the image's target in containerd.
    pub manifest_digest: String,
    pub config_digest: String,
    /// Digest of the one layer (for the artifact form: of the raw module).
    pub layer_digest: String,
    /// Every blob, by digest (`sha256:<hex>`).
    pub blobs: BTreeMap<String, Vec<u8>>,
    pub index_json: Vec<u8>,
    pub oci_layout: Vec<u8>,
}

impl ImageBuilder {
    /// A plain OCI image named `reference` (`NAME:TAG`), platform `wasip1/wasm`.
    pub fn image(reference: &str) -> ImageBuilder {
        ImageBuilder {
            reference: reference.into(),
            form: Form::Image,
            platform: Platform::wasip1(),
            module: None,
            files: BTreeMap::new(),
            entrypoint: None,
            env: Vec::new(),
            created: EPOCH.into(),
            author: None,
            layer_media_type: COMPONENT_LAYER_MEDIA_TYPE.into(),
            layers_label: true,
        }
    }

    /// An image of `module` as its one layer, runwasi's layout (see the module docs): the
    /// module is named `/app.wasm` (the entrypoint, and the layer's title `app.wasm`) unless
    /// [`ImageBuilder::module`] names it otherwise.
    pub fn wasm_layer(reference: &str, module: Vec<u8>) -> ImageBuilder {
        ImageBuilder {
            form: Form::WasmLayer,
            module: Some(("/app.wasm".into(), module)),
            ..ImageBuilder::image(reference)
        }
    }

    /// The media type of a Wasm-layer image's module layer: [`COMPONENT_LAYER_MEDIA_TYPE`]
    /// (the default) or [`WASM_LAYER_MEDIA_TYPE`].
    pub fn layer_media_type(mut self, media_type: &str) -> ImageBuilder {
        self.layer_media_type = media_type.into();
        self
    }

    /// A Wasm-layer image whose config does not name its layer ([`WASM_LAYERS_LABEL`]
    /// left out), as runwasi's builder makes them: for compatibility tests. Such a config
    /// binds no module to the image (see `wasm_layer::bound`).
    pub fn without_layers_label(mut self) -> ImageBuilder {
        self.layers_label = false;
        self
    }

    /// A CNCF Wasm OCI artifact named `reference` holding `module`.
    pub fn artifact(reference: &str, module: Vec<u8>) -> ImageBuilder {
        ImageBuilder {
            form: Form::Artifact,
            module: Some(("/module.wasm".into(), module)),
            ..ImageBuilder::image(reference)
        }
    }

    /// Puts `module` at `path` in the rootfs and makes it the entrypoint (unless one is set).
    /// For the artifact form only the bytes are used.
    pub fn module(mut self, path: &str, module: Vec<u8>) -> ImageBuilder {
        self.module = Some((path.into(), module));
        self
    }

    /// Adds a file to the rootfs (plain image only; a Wasm-layer image has no rootfs).
    pub fn file(mut self, path: &str, contents: Vec<u8>, mode: u32) -> ImageBuilder {
        self.files.insert(path.into(), File { contents, mode });
        self
    }

    pub fn entrypoint<S: Into<String>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.entrypoint = Some(args.into_iter().map(Into::into).collect());
        self
    }

    /// Adds `K=V` to the config's `Env` (plain image only).
    pub fn env(mut self, kv: &str) -> ImageBuilder {
        self.env.push(kv.into());
        self
    }

    pub fn platform(mut self, platform: Platform) -> ImageBuilder {
        self.platform = platform;
        self
    }

    pub fn created(mut self, created: &str) -> ImageBuilder {
        self.created = created.into();
        self
    }

    pub fn author(mut self, author: &str) -> ImageBuilder {
        self.author = Some(author.into());
        self
    }

    /// Builds the blobs and `index.json`.
    pub fn build(&self) -> Result<Layout> {
        check_reference(&self.reference)?;
        let mut blobs = BTreeMap::new();
        let mut layer_annotations = None;
        let (config_media, config, layer_media, layer, diff_id) = match self.form {
            Form::Image => {
                let layer = self.layer_tar()?;
                let digest = sha256(&layer);
                let config = self.image_config(Some(&digest))?;
                (
                    MediaType::ImageConfig,
                    config,
                    MediaType::ImageLayer,
                    layer,
                    digest,
                )
            }
            Form::WasmLayer => {
                if !self.files.is_empty() {
                    return Err(ImageError::Archive(
                        "a Wasm-layer image holds only its module, no files".into(),
                    ));
                }
                if !wasm_layer::is_wasm_layer(&self.layer_media_type) {
                    return Err(ImageError::Archive(format!(
                        "layer media type {:?} is not a Wasm layer's ({COMPONENT_LAYER_MEDIA_TYPE} or {WASM_LAYER_MEDIA_TYPE})",
                        self.layer_media_type
                    )));
                }
                let (path, module) = self.module.clone().ok_or(ImageError::NoEntrypoint)?;
                relative(&path)?;
                let title = path.rsplit('/').next().unwrap_or(&path).to_string();
                layer_annotations = Some(HashMap::from([(TITLE_ANNOTATION.to_string(), title)]));
                let digest = sha256(&module);
                let config = self.image_config(None)?;
                let layer_media = MediaType::Other(self.layer_media_type.clone());
                (MediaType::ImageConfig, config, layer_media, module, digest)
            }
            Form::Artifact => {
                let module = self
                    .module
                    .as_ref()
                    .map(|(_, m)| m.clone())
                    .unwrap_or_default();
                let digest = sha256(&module);
                let config = WasmConfig {
                    created: self.created.clone(),
                    author: self.author.clone(),
                    architecture: self.platform.arch.clone(),
                    os: self.platform.os.clone(),
                    layer_digests: vec![digest.clone()],
                    component: None,
                };
                let config = canonical_json(&config)?;
                let layer_media = MediaType::Other(WASM_LAYER_MEDIA_TYPE.into());
                let config_media = MediaType::Other(WASM_CONFIG_MEDIA_TYPE.into());
                (config_media, config, layer_media, module, digest)
            }
        };
        let config_desc = descriptor(config_media, &config);
        let mut layer_desc = descriptor(layer_media, &layer);
        layer_desc.set_annotations(layer_annotations);
        let config_digest = config_desc.digest().to_string();
        let layer_digest = layer_desc.digest().to_string();
        debug_assert_eq!(layer_digest, diff_id);
        blobs.insert(config_digest.clone(), config);
        blobs.insert(layer_digest.clone(), layer);

        let manifest = ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageManifest)
            .config(config_desc)
            .layers(vec![layer_desc])
            .build()?;
        let manifest = canonical_json(&manifest)?;
        let platform = PlatformBuilder::default()
            .os(Os::from(self.platform.os.as_str()))
            .architecture(Arch::from(self.platform.arch.as_str()))
            .build()?;
        let annotations = HashMap::from([
            (ANNOTATION_REF_NAME.to_string(), tag_of(&self.reference)),
            (
                ANNOTATION_CONTAINERD_IMAGE_NAME.to_string(),
                self.reference.clone(),
            ),
        ]);
        let manifest_desc = DescriptorBuilder::default()
            .media_type(MediaType::ImageManifest)
            .digest(parse_digest(&sha256(&manifest)))
            .size(manifest.len() as u64)
            .platform(platform)
            .annotations(annotations)
            .build()?;
        let manifest_digest = manifest_desc.digest().to_string();
        blobs.insert(manifest_digest.clone(), manifest);

        let index = ImageIndexBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageIndex)
            .manifests(vec![manifest_desc])
            .build()?;
        let oci_layout = OciLayoutBuilder::default()
            .image_layout_version("1.0.0")
            .build()?;
        Ok(Layout {
            reference: self.reference.clone(),
            form: self.form,
            manifest_digest,
            config_digest,
            layer_digest,
            blobs,
            index_json: canonical_json(&index)?,
            oci_layout: canonical_json(&oci_layout)?,
        })
    }

    /// Builds the image and writes it as a tar archive to `out` (atomically: temp, rename).
    pub fn write(&self, out: &Path) -> Result<Layout> {
        let layout = self.build()?;
        layout.write_tar(out)?;
        Ok(layout)
    }

    fn entrypoint_or_module(&self) -> Result<Vec<String>> {
        match (&self.entrypoint, &self.module) {
            (Some(e), _) => Ok(e.clone()),
            (None, Some((path, _))) => Ok(vec![path.clone()]),
            (None, None) => Err(ImageError::NoEntrypoint),
        }
    }

    /// The image config; `diff_id` is the tar layer's (none for a Wasm-layer image, whose
    /// config then carries [`WASM_LAYERS_LABEL`] instead).
    fn image_config(&self, diff_id: Option<&str>) -> Result<Vec<u8>> {
        let mut config = ConfigBuilder::default()
            .entrypoint(self.entrypoint_or_module()?)
            .working_dir("/");
        if !self.env.is_empty() {
            config = config.env(self.env.clone());
        }
        if diff_id.is_none() && self.layers_label {
            let module = self
                .module
                .as_ref()
                .map(|(_, m)| m.as_slice())
                .unwrap_or_default();
            config = config.labels(HashMap::from([(
                WASM_LAYERS_LABEL.to_string(),
                sha256(module),
            )]));
        }
        let mut builder = ImageConfigurationBuilder::default()
            .created(self.created.clone())
            .os(Os::from(self.platform.os.as_str()))
            .architecture(Arch::from(self.platform.arch.as_str()))
            .config(config.build()?)
            .rootfs(
                RootFsBuilder::default()
                    .typ("layers")
                    .diff_ids(diff_id.map(|d| vec![d.to_string()]).unwrap_or_default())
                    .build()?,
            );
        if let Some(author) = &self.author {
            builder = builder.author(author.clone());
        }
        canonical_json(&builder.build()?)
    }

    /// The rootfs layer: the module and the files, with their parent directories.
    fn layer_tar(&self) -> Result<Vec<u8>> {
        let mut entries: BTreeMap<String, Option<&File>> = BTreeMap::new();
        let module = self.module.as_ref().map(|(path, contents)| {
            (
                path.clone(),
                File {
                    contents: contents.clone(),
                    mode: 0o755,
                },
            )
        });
        for (path, file) in self.files.iter().chain(module.iter().map(|(p, f)| (p, f))) {
            let rel = relative(path)?;
            if entries.insert(rel.clone(), Some(file)).is_some() {
                return Err(ImageError::Duplicate(path.clone()));
            }
            let mut dir = Path::new(&rel).parent();
            while let Some(d) = dir.filter(|d| !d.as_os_str().is_empty()) {
                entries.entry(format!("{}/", d.display())).or_insert(None);
                dir = d.parent();
            }
        }
        let mut tar = tar::Builder::new(Vec::new());
        for (path, file) in entries {
            let mut header = tar::Header::new_ustar();
            header.set_mtime(0);
            header.set_uid(0);
            header.set_gid(0);
            match file {
                None => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_mode(0o755);
                    header.set_size(0);
                    tar.append_data(&mut header, &path, std::io::empty())
                }
                Some(f) => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_mode(f.mode);
                    header.set_size(f.contents.len() as u64);
                    tar.append_data(&mut header, &path, f.contents.as_slice())
                }
            }
            .map_err(io_err(format!("layer entry {path}")))?;
        }
        tar.into_inner().map_err(io_err("layer tar"))
    }
}

impl Layout {
    /// The archive as bytes: `oci-layout`, `index.json` and `blobs/sha256/<hex>`, sorted.
    pub fn to_tar(&self) -> Result<Vec<u8>> {
        let mut files: BTreeMap<String, &[u8]> = BTreeMap::new();
        files.insert("oci-layout".into(), &self.oci_layout);
        files.insert("index.json".into(), &self.index_json);
        for (digest, blob) in &self.blobs {
            let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
            files.insert(format!("blobs/sha256/{hex}"), blob);
        }
        let mut tar = tar::Builder::new(Vec::new());
        for dir in ["blobs/", "blobs/sha256/"] {
            let mut header = tar::Header::new_ustar();
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
            header.set_mtime(0);
            header.set_size(0);
            tar.append_data(&mut header, dir, std::io::empty())
                .map_err(io_err(format!("archive entry {dir}")))?;
        }
        for (path, contents) in files {
            let mut header = tar::Header::new_ustar();
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(0o644);
            header.set_mtime(0);
            header.set_size(contents.len() as u64);
            tar.append_data(&mut header, &path, contents)
                .map_err(io_err(format!("archive entry {path}")))?;
        }
        tar.into_inner().map_err(io_err("archive tar"))
    }

    /// Writes the archive to `out` through a temp file in the same directory and a rename.
    pub fn write_tar(&self, out: &Path) -> Result<()> {
        let bytes = self.to_tar()?;
        let tmp = out.with_extension(format!("tmp.{}", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, out)
        };
        write().map_err(|err| {
            let _ = std::fs::remove_file(&tmp);
            ImageError::Io {
                context: format!("write {}", out.display()),
                err,
            }
        })
    }
}

/// `sha256:<hex>` of `data`.
pub fn sha256(data: &[u8]) -> String {
    let hash = Sha256::digest(data);
    let mut s = String::with_capacity(7 + 64);
    s.push_str("sha256:");
    for b in hash {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

fn parse_digest(s: &str) -> Digest {
    s.parse().expect("sha256 digest we computed is valid")
}

fn descriptor(media_type: MediaType, blob: &[u8]) -> Descriptor {
    Descriptor::new(media_type, blob.len() as u64, parse_digest(&sha256(blob)))
}

/// JSON with object keys sorted at every level, whatever map types the value uses.
fn canonical_json<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    fn sort(v: serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(map) => {
                let sorted: BTreeMap<String, serde_json::Value> =
                    map.into_iter().map(|(k, v)| (k, sort(v))).collect();
                serde_json::Value::Object(sorted.into_iter().collect())
            }
            serde_json::Value::Array(a) => {
                serde_json::Value::Array(a.into_iter().map(sort).collect())
            }
            other => other,
        }
    }
    Ok(serde_json::to_vec(&sort(serde_json::to_value(value)?))?)
}

/// `/a/b` → `a/b`; refuses relative paths, `..` and the root itself.
fn relative(path: &str) -> Result<String> {
    let p = Path::new(path);
    let mut parts = Vec::new();
    for c in p.components() {
        match c {
            Component::RootDir => {}
            Component::Normal(s) => parts.push(s.to_string_lossy().into_owned()),
            Component::CurDir => {}
            _ => return Err(ImageError::Path(path.into())),
        }
    }
    if !p.is_absolute() || parts.is_empty() {
        return Err(ImageError::Path(path.into()));
    }
    Ok(parts.join("/"))
}

/// The tag of `NAME:TAG` (the last path component's part after `:`), else the whole
/// reference (`NAME@DIGEST`).
fn tag_of(reference: &str) -> String {
    let last = reference.rsplit('/').next().unwrap_or(reference);
    match last.split_once(':') {
        Some((_, tag)) if !reference.contains('@') => tag.to_string(),
        _ => reference.to_string(),
    }
}

fn check_reference(reference: &str) -> Result<()> {
    let last = reference.rsplit('/').next().unwrap_or(reference);
    let ok = !reference.is_empty()
        && !reference.chars().any(char::is_whitespace)
        && (last.contains(':') || reference.contains('@'));
    if ok {
        Ok(())
    } else {
        Err(ImageError::Reference(reference.into()))
    }
}

/// Most bytes [`Archive::read`] takes from one archive (a module image, not a distro), and
/// most bytes one compressed layer may expand to.
pub const MAX_ARCHIVE_BYTES: u64 = 4 << 30;
/// Most symlinks followed when looking for the entrypoint in the layers.
const MAX_SYMLINKS: usize = 8;

/// An OCI image layout read from a tar archive: ours, or `ctr images export`'s.
#[derive(Clone, Debug, Default)]
pub struct Archive {
    pub index_json: Vec<u8>,
    /// Every blob, by digest (`sha256:<hex>`), checked against its digest.
    pub blobs: BTreeMap<String, Vec<u8>>,
}

/// One image of an [`Archive`]: its manifest, config and names.
#[derive(Clone, Debug)]
pub struct FoundImage {
    /// `io.containerd.image.name`, else `org.opencontainers.image.ref.name`, if any.
    pub name: Option<String>,
    pub manifest_digest: String,
    pub manifest: oci_spec::image::ImageManifest,
    pub platform: Option<Platform>,
    pub form: Form,
    /// Raw config blob.
    pub config: Vec<u8>,
}

/// The module of an image: where it is (its path in the rootfs, or the layer digest for an
/// artifact) and its bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FoundModule {
    pub source: String,
    pub bytes: Vec<u8>,
}

impl Archive {
    /// Reads a tar archive holding an OCI layout; every `blobs/sha256/<hex>` must hash to
    /// its name.
    pub fn read(reader: impl std::io::Read) -> Result<Archive> {
        let mut archive = tar::Archive::new(std::io::Read::take(reader, MAX_ARCHIVE_BYTES));
        let mut out = Archive::default();
        let entries = archive.entries().map_err(io_err("read archive"))?;
        for entry in entries {
            let mut entry = entry.map_err(io_err("read archive entry"))?;
            if entry.header().entry_type() != tar::EntryType::Regular {
                continue;
            }
            let path = entry
                .path()
                .map_err(io_err("archive entry path"))?
                .to_string_lossy()
                .trim_start_matches("./")
                .to_string();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut data)
                .map_err(io_err(format!("read archive entry {path}")))?;
            if path == "index.json" {
                out.index_json = data;
            } else if let Some(hex) = path.strip_prefix("blobs/sha256/") {
                let digest = format!("sha256:{hex}");
                if sha256(&data) != digest {
                    return Err(ImageError::Archive(format!(
                        "blob {path} does not match its digest"
                    )));
                }
                out.blobs.insert(digest, data);
            }
        }
        if out.index_json.is_empty() {
            return Err(ImageError::Archive("no index.json".into()));
        }
        Ok(out)
    }

    pub fn blob(&self, digest: &str) -> Result<&[u8]> {
        self.blobs
            .get(digest)
            .map(Vec::as_slice)
            .ok_or_else(|| ImageError::Archive(format!("blob {digest} is missing")))
    }

    /// Every image manifest reachable from `index.json` (through nested indexes), with the
    /// name annotations of the top-level descriptor that led to it.
    pub fn images(&self) -> Result<Vec<FoundImage>> {
        let index: oci_spec::image::ImageIndex = serde_json::from_slice(&self.index_json)?;
        let mut found = Vec::new();
        for desc in index.manifests() {
            let ann = desc.annotations().clone().unwrap_or_default();
            let name = ann
                .get(ANNOTATION_CONTAINERD_IMAGE_NAME)
                .or_else(|| ann.get(ANNOTATION_REF_NAME))
                .cloned();
            self.collect(desc, name, 0, &mut found)?;
        }
        Ok(found)
    }

    fn collect(
        &self,
        desc: &Descriptor,
        name: Option<String>,
        depth: usize,
        found: &mut Vec<FoundImage>,
    ) -> Result<()> {
        let digest = desc.digest().to_string();
        match desc.media_type() {
            MediaType::ImageIndex | MediaType::Other(_) if depth < 4 && is_index(desc) => {
                let Ok(blob) = self.blob(&digest) else {
                    // `ctr images export` leaves out the manifests of other platforms.
                    return Ok(());
                };
                let index: oci_spec::image::ImageIndex = serde_json::from_slice(blob)?;
                for d in index.manifests() {
                    self.collect(d, name.clone(), depth + 1, found)?;
                }
                Ok(())
            }
            _ => {
                let Ok(blob) = self.blob(&digest) else {
                    return Ok(());
                };
                let manifest: oci_spec::image::ImageManifest = serde_json::from_slice(blob)?;
                let config = self.blob(manifest.config().digest().as_ref())?.to_vec();
                let is_artifact =
                    manifest.config().media_type().to_string() == WASM_CONFIG_MEDIA_TYPE;
                let has_wasm_layer = manifest
                    .layers()
                    .iter()
                    .any(|l| wasm_layer::is_wasm_layer(l.media_type().as_ref()));
                let platform = desc.platform().as_ref().map(|p| Platform {
                    os: p.os().to_string(),
                    arch: p.architecture().to_string(),
                });
                found.push(FoundImage {
                    name,
                    manifest_digest: digest,
                    manifest,
                    platform,
                    form: if is_artifact {
                        Form::Artifact
                    } else if has_wasm_layer {
                        Form::WasmLayer
                    } else {
                        Form::Image
                    },
                    config,
                });
                Ok(())
            }
        }
    }

    /// The one image named `reference` (any image when `None`), preferring a wasm platform
    /// when the name has several.
    pub fn image(&self, reference: Option<&str>) -> Result<FoundImage> {
        let images = self.images()?;
        let mut matching: Vec<FoundImage> = images
            .into_iter()
            .filter(|i| reference.is_none() || i.name.as_deref() == reference)
            .collect();
        matching.sort_by_key(|i| !i.platform.as_ref().is_some_and(Platform::is_wasm));
        matching.into_iter().next().ok_or_else(|| {
            ImageError::Archive(match reference {
                Some(r) => format!("no image named {r}"),
                None => "no image manifest".into(),
            })
        })
    }

    /// The image's module, found as the shim finds it: the file the entrypoint names in the
    /// tar layers, else the Wasm layer `wasm_layer::bound` picks for the entrypoint (its
    /// `source` is then the layer's digest). Tar layers are uncompressed or gzip-compressed
    /// (`...tar+gzip`, what `ctr images export` of a pulled image holds).
    pub fn module(&self, image: &FoundImage) -> Result<FoundModule> {
        if image.form == Form::Artifact {
            // The artifact's config has no entrypoint: its (one) Wasm layer is the module.
            return self.wasm_layer_module(image, "");
        }
        let config: oci_spec::image::ImageConfiguration = serde_json::from_slice(&image.config)?;
        let entrypoint = config
            .config()
            .as_ref()
            .and_then(|c| {
                c.entrypoint()
                    .as_ref()
                    .and_then(|e| e.first().cloned())
                    .or_else(|| c.cmd().as_ref().and_then(|c| c.first().cloned()))
            })
            .ok_or_else(|| ImageError::Archive("image config has no Entrypoint or Cmd".into()))?;
        let working_dir = config
            .config()
            .as_ref()
            .and_then(|c| c.working_dir().clone())
            .unwrap_or_else(|| "/".into());
        let tar_layers = image
            .manifest
            .layers()
            .iter()
            .filter(|l| !wasm_layer::is_wasm_layer(l.media_type().as_ref()));
        if image.form == Form::WasmLayer && tar_layers.clone().next().is_none() {
            return self.wasm_layer_module(image, &entrypoint);
        }
        let mut layers = Vec::new();
        for l in tar_layers {
            let media = l.media_type().to_string();
            let blob = self.blob(l.digest().as_ref())?;
            let tar = if media.ends_with(".tar") || media.ends_with("tar.diff") {
                blob.to_vec()
            } else {
                gunzip(&media, blob, MAX_ARCHIVE_BYTES).map_err(|e| {
                    ImageError::Archive(format!("layer {} ({media}): {e}", l.digest()))
                })?
            };
            layers.push(tar);
        }
        let mut path = if entrypoint.starts_with('/') {
            entrypoint.clone()
        } else {
            format!("{}/{entrypoint}", working_dir.trim_end_matches('/'))
        };
        for _ in 0..=MAX_SYMLINKS {
            match find_in_layers(&layers, &path)? {
                Some(LayerFile::File(bytes)) => {
                    return Ok(FoundModule {
                        source: path,
                        bytes,
                    })
                }
                Some(LayerFile::Link(target)) => {
                    path = if target.starts_with('/') {
                        target
                    } else {
                        let parent = Path::new(&path).parent().unwrap_or(Path::new("/"));
                        format!("{}/{target}", parent.display())
                    };
                }
                None if image.form == Form::WasmLayer => {
                    return self.wasm_layer_module(image, &entrypoint)
                }
                None => {
                    return Err(ImageError::Archive(format!(
                        "entrypoint {entrypoint} ({path}) is not a file in the image's layers"
                    )))
                }
            }
        }
        Err(ImageError::Archive(format!(
            "entrypoint {entrypoint}: more than {MAX_SYMLINKS} symlinks"
        )))
    }
}

impl Archive {
    /// The Wasm layer a container whose argv[0] is `argv0` runs: `wasm_layer::bound` for an
    /// image (the shim's rule: a `wasm` config, and a layer its label names if it names
    /// any), `wasm_layer::select` for an artifact (which `ctr run` refuses; its one layer).
    fn wasm_layer_module(&self, image: &FoundImage, argv0: &str) -> Result<FoundModule> {
        let layers: Vec<wasm_layer::Layer> = image
            .manifest
            .layers()
            .iter()
            .map(|l| wasm_layer::Layer {
                media_type: l.media_type().to_string(),
                digest: l.digest().to_string(),
                size: l.size(),
                title: l
                    .annotations()
                    .as_ref()
                    .and_then(|a| a.get(TITLE_ANNOTATION).cloned()),
            })
            .collect();
        let chosen = if image.form == Form::Artifact {
            wasm_layer::select(&layers, argv0)
        } else {
            let config: oci_spec::image::ImageConfiguration =
                serde_json::from_slice(&image.config)?;
            let bind = wasm_layer::ImageConfig {
                architecture: config.architecture().to_string(),
                layers_label: config
                    .config()
                    .as_ref()
                    .and_then(|c| c.labels().as_ref())
                    .and_then(|l| l.get(wasm_layer::LAYERS_LABEL).cloned()),
            };
            wasm_layer::bound(&layers, argv0, &bind, false)
        };
        let i = chosen.map_err(|e| ImageError::Archive(e.to_string()))?;
        let digest = layers[i].digest.clone();
        Ok(FoundModule {
            bytes: self.blob(&digest)?.to_vec(),
            source: digest,
        })
    }
}

/// The tar inside a gzip-compressed layer of media type `media`, of at most `max` bytes.
fn gunzip(media: &str, blob: &[u8], max: u64) -> std::result::Result<Vec<u8>, String> {
    use std::io::Read;
    if !media.ends_with("gzip") {
        return Err("unsupported compression (only gzip and uncompressed layers)".into());
    }
    let mut tar = Vec::new();
    // One byte more than allowed tells a layer at the limit from one beyond it.
    flate2::read::GzDecoder::new(blob)
        .take(max + 1)
        .read_to_end(&mut tar)
        .map_err(|e| format!("gunzip: {e}"))?;
    if tar.len() as u64 > max {
        return Err(format!("expands to more than {max} bytes"));
    }
    Ok(tar)
}

fn is_index(desc: &Descriptor) -> bool {
    matches!(desc.media_type(), MediaType::ImageIndex)
        || desc.media_type().to_string()
            == "application/vnd.docker.distribution.manifest.list.v2+json"
}

enum LayerFile {
    File(Vec<u8>),
    Link(String),
}

/// Looks `path` up from the top layer down, honouring whiteouts (`.wh.NAME`, `.wh..wh..opq`).
fn find_in_layers(layers: &[Vec<u8>], path: &str) -> Result<Option<LayerFile>> {
    let want = relative(path)?;
    for layer in layers.iter().rev() {
        let mut tar = tar::Archive::new(layer.as_slice());
        let entries = tar.entries().map_err(io_err("read layer"))?;
        let mut hidden = false;
        for entry in entries {
            let mut entry = entry.map_err(io_err("read layer entry"))?;
            let name = entry
                .path()
                .map_err(io_err("layer entry path"))?
                .to_string_lossy()
                .trim_start_matches("./")
                .trim_end_matches('/')
                .to_string();
            if name == want {
                let kind = entry.header().entry_type();
                if kind.is_symlink() {
                    let target = entry
                        .link_name()
                        .map_err(io_err("layer link"))?
                        .map(|t| t.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    return Ok(Some(LayerFile::Link(target)));
                }
                if kind.is_hard_link() {
                    let target = entry
                        .link_name()
                        .map_err(io_err("layer link"))?
                        .map(|t| format!("/{}", t.to_string_lossy()))
                        .unwrap_or_default();
                    return Ok(Some(LayerFile::Link(target)));
                }
                if !kind.is_file() {
                    return Ok(None);
                }
                let mut data = Vec::new();
                std::io::Read::read_to_end(&mut entry, &mut data)
                    .map_err(io_err(format!("read {path} from a layer")))?;
                return Ok(Some(LayerFile::File(data)));
            }
            let (dir, base) = match name.rsplit_once('/') {
                Some((d, b)) => (d, b),
                None => ("", name.as_str()),
            };
            let prefix = if dir.is_empty() {
                String::new()
            } else {
                format!("{dir}/")
            };
            if base == ".wh..wh..opq" && want.starts_with(&prefix) {
                hidden = true;
            } else if let Some(gone) = base.strip_prefix(".wh.") {
                let gone = format!("{prefix}{gone}");
                if want == gone || want.starts_with(&format!("{gone}/")) {
                    return Ok(None);
                }
            }
        }
        if hidden {
            return Ok(None);
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};

    const MODULE: &[u8] = b"\0asm\x01\0\0\0";

    fn blob<'a>(layout: &'a Layout, digest: &str) -> &'a [u8] {
        &layout.blobs[digest]
    }

    fn check_digests(layout: &Layout) {
        for (digest, data) in &layout.blobs {
            assert_eq!(&sha256(data), digest);
        }
        let index = ImageIndex::from_reader(layout.index_json.as_slice()).unwrap();
        assert_eq!(index.manifests().len(), 1);
        let m = &index.manifests()[0];
        assert_eq!(m.digest().to_string(), layout.manifest_digest);
        assert_eq!(m.size(), blob(layout, &layout.manifest_digest).len() as u64);
        let ann = m.annotations().as_ref().unwrap();
        assert_eq!(ann[ANNOTATION_REF_NAME], tag_of(&layout.reference));
        assert_eq!(ann[ANNOTATION_CONTAINERD_IMAGE_NAME], layout.reference);
        let manifest = ImageManifest::from_reader(blob(layout, &layout.manifest_digest)).unwrap();
        assert_eq!(manifest.schema_version(), 2);
        assert_eq!(manifest.config().digest().to_string(), layout.config_digest);
        assert_eq!(
            manifest.config().size(),
            blob(layout, &layout.config_digest).len() as u64
        );
        assert_eq!(manifest.layers().len(), 1);
        assert_eq!(
            manifest.layers()[0].digest().to_string(),
            layout.layer_digest
        );
        assert_eq!(
            manifest.layers()[0].size(),
            blob(layout, &layout.layer_digest).len() as u64
        );
    }

    #[test]
    fn plain_image_has_rootfs_layer_and_entrypoint() {
        let layout = ImageBuilder::image("example.com/probe:v1")
            .module("/app/probe.wasm", MODULE.to_vec())
            .file("/etc/greeting", b"hi\n".to_vec(), 0o644)
            .build()
            .unwrap();
        check_digests(&layout);
        let manifest = ImageManifest::from_reader(blob(&layout, &layout.manifest_digest)).unwrap();
        assert_eq!(manifest.config().media_type(), &MediaType::ImageConfig);
        assert_eq!(manifest.layers()[0].media_type(), &MediaType::ImageLayer);

        let config = ImageConfiguration::from_reader(blob(&layout, &layout.config_digest)).unwrap();
        assert_eq!(config.os(), &Os::Other("wasip1".into()));
        assert_eq!(config.architecture(), &Arch::Wasm);
        assert_eq!(config.created().as_deref(), Some(EPOCH));
        assert_eq!(
            config.config().as_ref().unwrap().entrypoint().as_deref(),
            Some(&["/app/probe.wasm".to_string()][..])
        );
        assert_eq!(
            config.rootfs().diff_ids(),
            &vec![layout.layer_digest.clone()]
        );

        let mut layer = tar::Archive::new(blob(&layout, &layout.layer_digest));
        let mut found = Vec::new();
        for e in layer.entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().display().to_string();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut data).unwrap();
            found.push((path, e.header().mode().unwrap(), data));
        }
        let names: Vec<&str> = found.iter().map(|(p, _, _)| p.as_str()).collect();
        assert_eq!(names, ["app/", "app/probe.wasm", "etc/", "etc/greeting"]);
        assert_eq!(found[1].1, 0o755);
        assert_eq!(found[1].2, MODULE);
        assert_eq!(found[3].2, b"hi\n");
    }

    #[test]
    fn artifact_follows_the_wasm_oci_spec() {
        let layout = ImageBuilder::artifact("example.com/probe:art", MODULE.to_vec())
            .build()
            .unwrap();
        check_digests(&layout);
        assert_eq!(layout.layer_digest, sha256(MODULE));
        assert_eq!(blob(&layout, &layout.layer_digest), MODULE);
        let manifest = ImageManifest::from_reader(blob(&layout, &layout.manifest_digest)).unwrap();
        assert_eq!(
            manifest.config().media_type().to_string(),
            WASM_CONFIG_MEDIA_TYPE
        );
        assert_eq!(
            manifest.layers()[0].media_type().to_string(),
            WASM_LAYER_MEDIA_TYPE
        );

        let config: serde_json::Value =
            serde_json::from_slice(blob(&layout, &layout.config_digest)).unwrap();
        assert_eq!(
            config,
            serde_json::json!({
                "created": EPOCH,
                "architecture": "wasm",
                "os": "wasip1",
                "layerDigests": [sha256(MODULE)],
            })
        );
        let index: serde_json::Value = serde_json::from_slice(&layout.index_json).unwrap();
        assert_eq!(index["manifests"][0]["platform"]["os"], "wasip1");
        assert_eq!(index["manifests"][0]["platform"]["architecture"], "wasm");
    }

    #[test]
    fn wasm_layer_image_is_runwasis_layout() {
        let layout = ImageBuilder::wasm_layer("example.com/probe:layer", MODULE.to_vec())
            .module("/bin/probe.wasm", MODULE.to_vec())
            .env("A=1")
            .build()
            .unwrap();
        check_digests(&layout);
        assert_eq!(layout.form, Form::WasmLayer);
        assert_eq!(layout.layer_digest, sha256(MODULE));
        assert_eq!(blob(&layout, &layout.layer_digest), MODULE);
        let manifest = ImageManifest::from_reader(blob(&layout, &layout.manifest_digest)).unwrap();
        assert_eq!(manifest.config().media_type(), &MediaType::ImageConfig);
        let layer = &manifest.layers()[0];
        assert_eq!(layer.media_type().to_string(), COMPONENT_LAYER_MEDIA_TYPE);
        assert_eq!(
            layer.annotations().as_ref().unwrap()[TITLE_ANNOTATION],
            "probe.wasm"
        );
        let config = ImageConfiguration::from_reader(blob(&layout, &layout.config_digest)).unwrap();
        assert_eq!(config.os(), &Os::Other("wasip1".into()));
        assert_eq!(config.architecture(), &Arch::Wasm);
        // No tar layer: containerd unpacks nothing and makes an empty rootfs.
        assert!(config.rootfs().diff_ids().is_empty());
        let c = config.config().as_ref().unwrap();
        assert_eq!(
            c.entrypoint().as_deref(),
            Some(&["/bin/probe.wasm".to_string()][..])
        );
        assert_eq!(
            c.labels().as_ref().unwrap()[WASM_LAYERS_LABEL],
            sha256(MODULE)
        );

        let other = ImageBuilder::wasm_layer("x:1", b"\0asm\x01\0\0\0\0".to_vec())
            .layer_media_type(WASM_LAYER_MEDIA_TYPE)
            .build()
            .unwrap();
        assert_ne!(other.config_digest, layout.config_digest);
        let manifest = ImageManifest::from_reader(blob(&other, &other.manifest_digest)).unwrap();
        assert_eq!(
            manifest.layers()[0].media_type().to_string(),
            WASM_LAYER_MEDIA_TYPE
        );
        let e = ImageBuilder::wasm_layer("x:1", MODULE.to_vec())
            .layer_media_type("application/vnd.oci.image.layer.v1.tar")
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("is not a Wasm layer's"), "{e}");
        let e = ImageBuilder::wasm_layer("x:1", MODULE.to_vec())
            .file("/etc/x", vec![], 0o644)
            .build()
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "image archive: a Wasm-layer image holds only its module, no files"
        );
    }

    #[test]
    fn archive_is_an_oci_layout_and_deterministic() {
        let build = || {
            ImageBuilder::image("localhost/native:1")
                .platform(Platform::linux_amd64())
                .file("/hello", b"\x7fELF".to_vec(), 0o755)
                .file("/a/b/c", b"c".to_vec(), 0o644)
                .env("A=1")
                .entrypoint(["/hello"])
                .build()
                .unwrap()
                .to_tar()
                .unwrap()
        };
        let bytes = build();
        assert_eq!(bytes, build());

        let mut archive = tar::Archive::new(bytes.as_slice());
        let mut blobs = 0;
        let mut names = Vec::new();
        for e in archive.entries().unwrap() {
            let mut e = e.unwrap();
            assert_eq!(e.header().mtime().unwrap(), 0);
            let path = e.path().unwrap().display().to_string();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut data).unwrap();
            if let Some(hex) = path.strip_prefix("blobs/sha256/").filter(|h| !h.is_empty()) {
                assert_eq!(sha256(&data), format!("sha256:{hex}"));
                blobs += 1;
            }
            if path == "oci-layout" {
                assert_eq!(data, br#"{"imageLayoutVersion":"1.0.0"}"#);
            }
            names.push(path);
        }
        assert_eq!(blobs, 3);
        assert!(names.contains(&"index.json".to_string()));
        let config_of = |layout: &Layout| {
            ImageConfiguration::from_reader(blob(layout, &layout.config_digest)).unwrap()
        };
        let layout = ImageBuilder::image("localhost/native:1")
            .platform(Platform::linux_amd64())
            .file("/hello", vec![], 0o755)
            .entrypoint(["/hello"])
            .build()
            .unwrap();
        assert_eq!(config_of(&layout).os(), &Os::Linux);
        assert_eq!(config_of(&layout).architecture(), &Arch::Amd64);
    }

    #[test]
    fn bad_inputs_are_named() {
        let err = ImageBuilder::image("x:1")
            .file("relative", vec![], 0o644)
            .entrypoint(["/x"])
            .build()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid image path \"relative\": must be absolute, without `..`"
        );
        let err = ImageBuilder::image("x:1")
            .file("/a/../b", vec![], 0o644)
            .entrypoint(["/x"])
            .build()
            .unwrap_err();
        assert!(matches!(err, ImageError::Path(_)), "{err}");
        let err = ImageBuilder::image("x:1").build().unwrap_err();
        assert_eq!(
            err.to_string(),
            "image has no entrypoint: give a module or an entrypoint"
        );
        let err = ImageBuilder::image("no-tag")
            .module("/m.wasm", vec![])
            .build()
            .unwrap_err();
        assert!(matches!(err, ImageError::Reference(_)), "{err}");
        let err = ImageBuilder::image("x:1")
            .module("/m.wasm", vec![])
            .file("/m.wasm", vec![], 0o644)
            .build()
            .unwrap_err();
        assert_eq!(err.to_string(), "two files at /m.wasm");
        assert!("wasip1".parse::<Platform>().is_err());
        assert_eq!(
            "wasip1/wasm".parse::<Platform>().unwrap(),
            Platform::wasip1()
        );
    }
    #[test]
    fn gzip_layers_are_decompressed_within_a_bound() {
        use std::io::Write;
        let tar = ImageBuilder::image("example.com/m:1")
            .module("/app.wasm", MODULE.to_vec())
            .build()
            .unwrap()
            .to_tar()
            .unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let gz = gz.finish().unwrap();
        let media = "application/vnd.oci.image.layer.v1.tar+gzip";
        assert_eq!(gunzip(media, &gz, tar.len() as u64).unwrap(), tar);
        let e = gunzip(media, &gz, tar.len() as u64 - 1).unwrap_err();
        assert!(e.contains("expands to more than"), "{e}");
        let e = gunzip(media, b"not gzip", 1 << 20).unwrap_err();
        assert!(e.starts_with("gunzip: "), "{e}");
        let e = gunzip("application/vnd.oci.image.layer.v1.tar+zstd", &gz, 1 << 20).unwrap_err();
        assert!(e.contains("unsupported compression"), "{e}");
    }

    #[test]
    fn archives_read_back_and_give_their_module() {
        for form in [Form::Image, Form::WasmLayer, Form::Artifact] {
            let builder = match form {
                Form::Image => {
                    ImageBuilder::image("example.com/m:1").module("/app.wasm", MODULE.to_vec())
                }
                Form::WasmLayer => ImageBuilder::wasm_layer("example.com/m:1", MODULE.to_vec()),
                Form::Artifact => ImageBuilder::artifact("example.com/m:1", MODULE.to_vec()),
            };
            let layout = builder.build().unwrap();
            let archive = Archive::read(layout.to_tar().unwrap().as_slice()).unwrap();
            assert_eq!(archive.blobs, layout.blobs);
            let image = archive.image(Some("example.com/m:1")).unwrap();
            assert_eq!(image.form, form);
            assert_eq!(image.manifest_digest, layout.manifest_digest);
            assert_eq!(image.platform, Some(Platform::wasip1()));
            let module = archive.module(&image).unwrap();
            assert_eq!(module.bytes, MODULE);
            let want_source = match form {
                Form::Image => "/app.wasm".to_string(),
                Form::WasmLayer | Form::Artifact => sha256(MODULE),
            };
            assert_eq!(module.source, want_source);
            let err = archive.image(Some("example.com/other:1")).unwrap_err();
            assert_eq!(
                err.to_string(),
                "image archive: no image named example.com/other:1"
            );
        }
    }

    #[test]
    fn entrypoint_lookup_follows_links_and_whiteouts() {
        let layer = |files: &[(&str, Option<&str>, &[u8])]| {
            let mut tar = tar::Builder::new(Vec::new());
            for (path, link, data) in files {
                let mut h = tar::Header::new_ustar();
                h.set_mode(0o755);
                match link {
                    Some(target) => {
                        h.set_entry_type(tar::EntryType::Symlink);
                        h.set_size(0);
                        tar.append_link(&mut h, path, target).unwrap();
                    }
                    None => {
                        h.set_size(data.len() as u64);
                        tar.append_data(&mut h, path, *data).unwrap();
                    }
                }
            }
            tar.into_inner().unwrap()
        };
        let lower = layer(&[("bin/real.wasm", None, b"real"), ("old.wasm", None, b"old")]);
        let upper = layer(&[
            ("app.wasm", Some("bin/real.wasm"), b""),
            (".wh.old.wasm", None, b""),
        ]);
        let layers = vec![lower, upper];
        match find_in_layers(&layers, "/app.wasm").unwrap() {
            Some(LayerFile::Link(t)) => assert_eq!(t, "bin/real.wasm"),
            _ => panic!("expected a link"),
        }
        match find_in_layers(&layers, "/bin/real.wasm").unwrap() {
            Some(LayerFile::File(b)) => assert_eq!(b, b"real"),
            _ => panic!("expected a file"),
        }
        assert!(find_in_layers(&layers, "/old.wasm").unwrap().is_none());
    }

    #[test]
    fn a_blob_that_does_not_match_its_digest_is_refused() {
        let layout = ImageBuilder::artifact("x:1", MODULE.to_vec())
            .build()
            .unwrap();
        let mut tampered = layout.clone();
        let digest = layout.layer_digest.clone();
        tampered.blobs.get_mut(&digest).unwrap()[0] ^= 1;
        // to_tar names the blob by its (now wrong) digest key.
        let err = Archive::read(tampered.to_tar().unwrap().as_slice()).unwrap_err();
        assert!(
            err.to_string().contains("does not match its digest"),
            "{err}"
        );
    }
}

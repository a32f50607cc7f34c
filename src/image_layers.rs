//! The module of a container whose image carries it as a Wasm layer (the layer is the module's
//! bytes, see [`wasmedge_aot_protocol::wasm_layer`]), read from containerd's content store
//! through containerd's API with `containerd-client` (containerd's own Rust bindings, which
//! runwasi's shims use too): never from a tar layer, never from containerd's files.
//!
//! [`ImageLayers::module`] is asked only when `process.args[0]` is not a file in the
//! container's rootfs, so a plain image never pays for it. For such a container the shim asks
//! containerd, in the container's namespace, over containerd's GRPC socket (the `-address`
//! containerd starts every shim with):
//!
//! 1. `Containers.Get(id)`: the image the container was made from, by name (a container
//!    made from a rootfs directory has none, and the create fails as before);
//! 2. `Images.Get(name)`: the image's target, a manifest, or an index of `wasm` manifests
//!    only, whose first is taken (an index that lists any other platform is a Linux image:
//!    containerd made the container from that platform's manifest);
//! 3. `Content.Read` of that index and manifest, memoised by digest: a digest names the same
//!    bytes forever, so a memo by digest is never stale (a re-tagged image has another
//!    target, which step 2 sees at the next create);
//! 4. if the manifest has Wasm layers, `Content.Read` of its config (memoised too): only a
//!    config for the `wasm` architecture has its layers run, and only those its label names
//!    if it names any ([`bound`]): CRI knows an image by its config's digest, and the name
//!    it records may be another party's image with the same config;
//! 5. the layer [`bound`] picks: read once per shim into a sealed memory file, one read at a
//!    time.
//!
//! While it copies a layer into the memory file, the shim computes its sha256 (checked
//! against the layer's digest and size: the bytes are the layer's, whatever the store held)
//! and its blake3 (the cache's module hash), then seals the file against every write, grow or
//! shrink. Every later container of the same layer gets that file and that hash: no read and
//! no hash, two small requests per create. The runner is handed the hash with the file and
//! does not hash either (ARCHITECTURE.md, "Images with Wasm layers", says why the cache key
//! stays right).
//!
//! Bounds: an index, manifest or config up to [`MAX_MANIFEST_BYTES`], a module up to
//! [`MAX_MODULE_BYTES`] (the copy is the shim's memory, outside every pod's limits); every
//! request has a timeout, so a containerd that does not answer fails the create with a
//! message instead of hanging it. Modules are kept up to [`MAX_KEPT_MODULES`] and
//! [`MAX_KEPT_BYTES`] (least recently used out first), and only modules: bytes without
//! Wasm's magic fail their create and are dropped.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::{GetContainerRequest, GetImageRequest, ReadContentRequest};
use containerd_client::tonic::transport::Channel;
use containerd_client::tonic::{self, Request};
use log::debug;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use tokio::time::{timeout, timeout_at, Instant};
use wasmedge_aot_cache::{ModuleHash, ModuleHasher};
use wasmedge_aot_protocol::config::WasmLayers;
use wasmedge_aot_protocol::wasm_layer::{
    bound, select, ImageConfig, Layer, SelectError, LAYERS_LABEL, TITLE_ANNOTATION,
    WASM_ARCHITECTURE,
};

/// Most bytes of an image index or manifest (containerd's own limit for a manifest it
/// fetches is 4 MiB).
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// Most bytes of a module read from a Wasm layer. The copy is the shim's memory, outside
/// every pod's limits, so it is bounded well below what a node has: the largest real
/// programs measured (yosys, 28 MB) fit eight times over.
pub const MAX_MODULE_BYTES: u64 = 256 << 20;
/// Modules kept in memory for later containers, by count and by total bytes (a module over
/// the total is used once and not kept).
pub const MAX_KEPT_MODULES: usize = 16;
pub const MAX_KEPT_BYTES: u64 = 256 << 20;
/// The media type a config is parsed as (the memo tells configs from manifests by it).
const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";
/// Indexes and manifests kept, by digest.
const MAX_KEPT_MANIFESTS: usize = 64;
/// Connecting to containerd's socket.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// One request (and the first answer of a content read).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// A whole content read (a module of up to a gigabyte).
const READ_TIMEOUT: Duration = Duration::from_secs(120);
/// How containerd's GRPC API is told the namespace of a request.
const NAMESPACE_HEADER: &str = "containerd-namespace";

const INDEX_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// Why a container's module could not be taken from its image's Wasm layers.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("the container has no image to take a Wasm layer from")]
    NoImage,
    #[error("this node runs no Wasm layers (wasm_layers = \"off\")")]
    Off,
    #[error("image {image}: {source}")]
    NoWasmLayer {
        image: String,
        source: wasmedge_aot_protocol::wasm_layer::SelectError,
    },
    #[error("connect to containerd at {address}: {message}")]
    Connect { address: String, message: String },
    #[error("containerd {call}: {message}")]
    Call { call: String, message: String },
    #[error("containerd {call}: no answer in {secs} s")]
    Timeout { call: String, secs: u64 },
    #[error("image {image}: {message}")]
    Image { image: String, message: String },
    #[error("blob {digest}: {message}")]
    Blob { digest: String, message: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

impl LayerError {
    fn call(call: impl Into<String>) -> impl FnOnce(tonic::Status) -> LayerError {
        let call = call.into();
        move |s| LayerError::Call {
            call,
            message: format!("{:?}: {}", s.code(), s.message()),
        }
    }

    fn timeout(call: impl Into<String>, after: Duration) -> LayerError {
        LayerError::Timeout {
            call: call.into(),
            secs: after.as_secs(),
        }
    }

    fn blob(digest: &str, message: impl Into<String>) -> LayerError {
        LayerError::Blob {
            digest: digest.to_string(),
            message: message.into(),
        }
    }
}

/// A module read from a Wasm layer, in a sealed memory file: its bytes can never change.
#[derive(Debug)]
pub struct LayerModule {
    /// The layer's digest (`sha256:<hex>`), checked against the bytes.
    pub digest: String,
    /// blake3 of the bytes, computed as they were copied in: the cache's module hash.
    pub hash: ModuleHash,
    pub size: u64,
    /// Its first bytes, read once, as the module was kept.
    pub header: crate::wasm::Header,
    file: File,
}

impl LayerModule {
    /// A read-only descriptor of the module, with an offset of its own.
    pub fn open(&self) -> std::io::Result<File> {
        File::open(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }
}

/// A descriptor of the OCI image spec, with the fields used here.
#[derive(Debug, Clone, Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default)]
    annotations: Option<HashMap<String, String>>,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Debug, Clone, Deserialize)]
struct Platform {
    #[serde(default)]
    architecture: String,
}

/// An image manifest or index: `config` and `layers` for the one, `manifests` for the other.
#[derive(Debug, Deserialize)]
struct Manifest {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
}

/// What a blob of the image said, memoised by its digest.
#[derive(Debug, Clone)]
enum Parsed {
    /// An index: the manifest taken from it.
    Index(Descriptor),
    /// A manifest: its layers and its config.
    Manifest(Arc<ManifestInfo>),
    /// An image config.
    Config(Arc<ImageConfig>),
}

#[derive(Debug, Default)]
struct ManifestInfo {
    layers: Vec<Layer>,
    /// `None` for the "manifest" of an index without a `wasm` platform.
    config: Option<Descriptor>,
}

/// An image config, with the fields used here.
#[derive(Debug, Deserialize)]
struct ConfigBlob {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    config: Option<ConfigSection>,
}

#[derive(Debug, Deserialize)]
struct ConfigSection {
    #[serde(rename = "Labels", default)]
    labels: Option<HashMap<String, String>>,
}

/// The shim's reader of Wasm layers: one per shim (a shim serves one containerd namespace).
pub struct ImageLayers {
    /// containerd's GRPC socket.
    address: PathBuf,
    namespace: String,
    channel: Mutex<Option<Channel>>,
    parsed: Mutex<HashMap<String, Parsed>>,
    /// Most recently used last.
    modules: Mutex<Vec<Arc<LayerModule>>>,
    /// Held while a layer is read (one at a time).
    reading: tokio::sync::Mutex<()>,
    /// The node's choice of which images' Wasm layers run.
    mode: WasmLayers,
    /// Digests of layers read before that are no modules (most recent last): their next
    /// containers fail at once instead of reading and hashing them again.
    not_modules: Mutex<Vec<String>>,
}

impl std::fmt::Debug for ImageLayers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageLayers")
            .field("address", &self.address)
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl ImageLayers {
    /// A reader for `namespace` of the containerd at `address` (`unix://PATH` or a path).
    /// Nothing is connected until a container needs it.
    pub fn new(address: &str, namespace: &str, mode: WasmLayers) -> ImageLayers {
        let path = address.strip_prefix("unix://").unwrap_or(address);
        ImageLayers {
            address: PathBuf::from(path),
            namespace: namespace.to_string(),
            channel: Mutex::new(None),
            parsed: Mutex::new(HashMap::new()),
            modules: Mutex::new(Vec::new()),
            reading: tokio::sync::Mutex::new(()),
            mode,
            not_modules: Mutex::new(Vec::new()),
        }
    }

    /// The module container `id` runs, from the Wasm layers of its image; `argv0` chooses
    /// among several (see [`wasm_layer`]).
    pub async fn module(&self, id: &str, argv0: &str) -> Result<Arc<LayerModule>, LayerError> {
        if self.mode == WasmLayers::Off {
            return Err(LayerError::Off);
        }
        let channel = self.channel().await?;
        let image = self.image_of(&channel, id).await?;
        let in_image = |e: LayerError| match e {
            LayerError::Image { .. } => e,
            other => LayerError::Image {
                image: image.clone(),
                message: other.to_string(),
            },
        };
        let manifest = self.manifest_of(&channel, &image).await.map_err(in_image)?;
        let select_err = |e: SelectError| match e {
            SelectError::NoWasmLayer | SelectError::NotWasmPlatform { .. } => {
                LayerError::NoWasmLayer {
                    image: image.clone(),
                    source: e,
                }
            }
            SelectError::Ambiguous { .. }
            | SelectError::NotNamedByConfig { .. }
            | SelectError::Unlabelled => LayerError::Image {
                image: image.clone(),
                message: e.to_string(),
            },
        };
        // A Linux image (no Wasm layer) costs no read of its config.
        select(&manifest.layers, argv0).map_err(select_err)?;
        let config = match &manifest.config {
            Some(desc) => self.config(&channel, desc).await.map_err(in_image)?,
            None => Arc::new(ImageConfig::default()),
        };
        let require_label = self.mode == WasmLayers::Labelled;
        let chosen = bound(&manifest.layers, argv0, &config, require_label).map_err(select_err)?;
        let layer = &manifest.layers[chosen];
        if let Some(m) = self.kept(&layer.digest) {
            return Ok(m);
        }
        let not_a_module = || LayerError::Image {
            image: image.clone(),
            message: format!(
                "Wasm layer {} is no Wasm module (no \\0asm magic, read before)",
                layer.digest
            ),
        };
        if self.is_not_module(&layer.digest) {
            return Err(not_a_module());
        }
        // One layer read at a time per shim: N containers of a new image wait for the first
        // read and take its module, and the memory in flight is one module's at most.
        let _reading = self.reading.lock().await;
        if let Some(m) = self.kept(&layer.digest) {
            return Ok(m);
        }
        if self.is_not_module(&layer.digest) {
            return Err(not_a_module());
        }
        let m = Arc::new(self.read_module(&channel, layer).await.map_err(in_image)?);
        debug!(
            "image {image}: module of {} bytes from Wasm layer {} (blake3 {})",
            m.size,
            m.digest,
            m.hash.to_hex()
        );
        // Bytes that are no module fail the create (its Wasm check) and are not kept; their
        // digest is, so that the next container of the image costs no read.
        if m.header.is_wasm() {
            self.keep(m.clone());
        } else {
            let mut bad = self.not_modules.lock().unwrap_or_else(|p| p.into_inner());
            if bad.len() >= MAX_KEPT_MANIFESTS {
                bad.remove(0);
            }
            bad.push(m.digest.clone());
        }
        Ok(m)
    }

    /// A channel to containerd, connected on first use and kept (tonic reconnects it).
    async fn channel(&self) -> Result<Channel, LayerError> {
        if let Some(c) = self
            .channel
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Ok(c);
        }
        let connect_err = |message: String| LayerError::Connect {
            address: self.address.display().to_string(),
            message,
        };
        let channel = timeout(CONNECT_TIMEOUT, containerd_client::connect(&self.address))
            .await
            .map_err(|_| connect_err(format!("no answer in {} s", CONNECT_TIMEOUT.as_secs())))?
            .map_err(|e| connect_err(error_chain(&e)))?;
        *self.channel.lock().unwrap_or_else(|p| p.into_inner()) = Some(channel.clone());
        Ok(channel)
    }

    fn request<T>(&self, message: T) -> Result<Request<T>, LayerError> {
        let mut req = Request::new(message);
        let value = self.namespace.parse().map_err(|_| LayerError::Call {
            call: "request".into(),
            message: format!("namespace {:?} is not a valid header value", self.namespace),
        })?;
        req.metadata_mut().insert(NAMESPACE_HEADER, value);
        Ok(req)
    }

    /// The name of the image container `id` was made from.
    async fn image_of(&self, channel: &Channel, id: &str) -> Result<String, LayerError> {
        let call = format!("Containers.Get {id}");
        let req = self.request(GetContainerRequest { id: id.to_string() })?;
        let reply = timeout(
            CALL_TIMEOUT,
            ContainersClient::new(channel.clone()).get(req),
        )
        .await
        .map_err(|_| LayerError::timeout(&call, CALL_TIMEOUT))?
        .map_err(LayerError::call(&call))?;
        let image = reply
            .into_inner()
            .container
            .map(|c| c.image)
            .unwrap_or_default();
        if image.is_empty() {
            return Err(LayerError::NoImage);
        }
        Ok(image)
    }

    /// Image `name`'s manifest (its manifest for `wasm` if it is an index).
    async fn manifest_of(
        &self,
        channel: &Channel,
        name: &str,
    ) -> Result<Arc<ManifestInfo>, LayerError> {
        let call = format!("Images.Get {name}");
        let req = self.request(GetImageRequest {
            name: name.to_string(),
        })?;
        let reply = timeout(CALL_TIMEOUT, ImagesClient::new(channel.clone()).get(req))
            .await
            .map_err(|_| LayerError::timeout(&call, CALL_TIMEOUT))?
            .map_err(LayerError::call(&call))?;
        let target = reply
            .into_inner()
            .image
            .and_then(|i| i.target)
            .ok_or_else(|| LayerError::Image {
                image: name.to_string(),
                message: "containerd's record has no target".into(),
            })?;
        let mut desc = Descriptor {
            media_type: target.media_type,
            digest: target.digest,
            size: u64::try_from(target.size).unwrap_or(u64::MAX),
            annotations: None,
            platform: None,
        };
        // An index of indexes is legal; four levels are more than any image has.
        for _ in 0..4 {
            match self
                .parse(channel, &desc)
                .await
                .map_err(|e| LayerError::Image {
                    image: name.to_string(),
                    message: e.to_string(),
                })? {
                Parsed::Manifest(m) => return Ok(m),
                Parsed::Index(next) => desc = next,
                Parsed::Config(_) => {
                    return Err(LayerError::blob(
                        &desc.digest,
                        "an image config, not a manifest",
                    ))
                }
            }
        }
        Err(LayerError::Image {
            image: name.to_string(),
            message: "more than 4 nested image indexes".into(),
        })
    }

    /// What image config `desc` says, memoised by digest.
    async fn config(
        &self,
        channel: &Channel,
        desc: &Descriptor,
    ) -> Result<Arc<ImageConfig>, LayerError> {
        match self
            .parse(
                channel,
                &Descriptor {
                    media_type: CONFIG_TYPE.to_string(),
                    ..desc.clone()
                },
            )
            .await?
        {
            Parsed::Config(c) => Ok(c),
            _ => Err(LayerError::blob(&desc.digest, "not an image config")),
        }
    }

    /// What the index, manifest or config `desc` says, memoised by digest and media type.
    async fn parse(&self, channel: &Channel, desc: &Descriptor) -> Result<Parsed, LayerError> {
        let memo_key = format!("{} {}", desc.digest, desc.media_type == CONFIG_TYPE);
        if let Some(p) = self
            .parsed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&memo_key)
        {
            return Ok(p.clone());
        }
        let mut bytes = Vec::new();
        self.read(
            channel,
            &desc.digest,
            desc.size,
            MAX_MANIFEST_BYTES,
            |chunk| {
                bytes.extend_from_slice(chunk);
                Ok(())
            },
        )
        .await?;
        let parsed = if desc.media_type == CONFIG_TYPE {
            parse_config(&bytes)
        } else {
            parse_manifest(&desc.media_type, &bytes)
        }
        .map_err(|message| LayerError::blob(&desc.digest, message))?;
        let mut memo = self.parsed.lock().unwrap_or_else(|p| p.into_inner());
        if memo.len() >= MAX_KEPT_MANIFESTS {
            memo.clear();
        }
        memo.insert(memo_key, parsed.clone());
        Ok(parsed)
    }

    /// Reads blob `digest` of `size` bytes (at most `max`) from the content store, handing
    /// each chunk to `each`; fails unless exactly `size` bytes came, hashing to `digest`.
    async fn read(
        &self,
        channel: &Channel,
        digest: &str,
        size: u64,
        max: u64,
        mut each: impl FnMut(&[u8]) -> Result<(), LayerError>,
    ) -> Result<(), LayerError> {
        let want = sha256_hex(digest).ok_or_else(|| {
            LayerError::blob(digest, "not a sha256 digest (sha256:<64 hex digits>)")
        })?;
        if size > max {
            return Err(LayerError::blob(
                digest,
                format!("{size} bytes, more than the {max} this shim reads"),
            ));
        }
        let call = format!("Content.Read {digest}");
        let deadline = Instant::now() + READ_TIMEOUT;
        let req = self.request(ReadContentRequest {
            digest: digest.to_string(),
            offset: 0,
            size: 0,
        })?;
        let mut stream = timeout(CALL_TIMEOUT, ContentClient::new(channel.clone()).read(req))
            .await
            .map_err(|_| LayerError::timeout(&call, CALL_TIMEOUT))?
            .map_err(LayerError::call(&call))?
            .into_inner();
        let mut sha = Sha256::new();
        let mut got = 0u64;
        loop {
            let next = timeout_at(deadline, stream.message())
                .await
                .map_err(|_| LayerError::timeout(&call, READ_TIMEOUT))?
                .map_err(LayerError::call(&call))?;
            let Some(msg) = next else { break };
            if u64::try_from(msg.offset).ok() != Some(got) {
                return Err(LayerError::blob(
                    digest,
                    format!("a chunk at offset {} where {got} was due", msg.offset),
                ));
            }
            got += msg.data.len() as u64;
            if got > size {
                return Err(LayerError::blob(
                    digest,
                    format!("more than the {size} bytes its descriptor says"),
                ));
            }
            sha.update(&msg.data);
            each(&msg.data)?;
        }
        if got != size {
            return Err(LayerError::blob(
                digest,
                format!("{got} bytes where its descriptor says {size}"),
            ));
        }
        let have = hex(&sha.finalize());
        if have != want {
            return Err(LayerError::blob(
                digest,
                format!("the bytes read hash to sha256:{have}"),
            ));
        }
        Ok(())
    }

    /// Copies `layer` into a new memory file, hashing it as it goes, and seals it.
    async fn read_module(
        &self,
        channel: &Channel,
        layer: &Layer,
    ) -> Result<LayerModule, LayerError> {
        let io_err = |context: &str| {
            let context = format!("{context} for layer {}", layer.digest);
            move |e: rustix::io::Errno| LayerError::Io {
                context,
                source: e.into(),
            }
        };
        use rustix::fs::{MemfdFlags, SealFlags};
        let fd = rustix::fs::memfd_create(
            "wasm-layer",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )
        .map_err(io_err("memfd_create"))?;
        let mut file = File::from(fd);
        let mut hasher = ModuleHasher::default();
        let digest = layer.digest.clone();
        self.read(
            channel,
            &layer.digest,
            layer.size,
            MAX_MODULE_BYTES,
            |chunk| {
                hasher.update(chunk);
                file.write_all(chunk).map_err(|source| LayerError::Io {
                    context: format!("copy layer {digest} into memory"),
                    source,
                })
            },
        )
        .await?;
        rustix::fs::fcntl_add_seals(
            &file,
            SealFlags::WRITE | SealFlags::GROW | SealFlags::SHRINK | SealFlags::SEAL,
        )
        .map_err(io_err("seal the memory file"))?;
        Ok(LayerModule {
            digest: layer.digest.clone(),
            hash: hasher.finalize(),
            size: layer.size,
            header: crate::wasm::Header::of(&file),
            file,
        })
    }

    fn is_not_module(&self, digest: &str) -> bool {
        self.not_modules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|d| d == digest)
    }

    fn kept(&self, digest: &str) -> Option<Arc<LayerModule>> {
        let mut kept = self.modules.lock().unwrap_or_else(|p| p.into_inner());
        let i = kept.iter().position(|m| m.digest == digest)?;
        let m = kept.remove(i);
        kept.push(m.clone());
        Some(m)
    }

    fn keep(&self, m: Arc<LayerModule>) {
        let mut kept = self.modules.lock().unwrap_or_else(|p| p.into_inner());
        kept.retain(|k| k.digest != m.digest);
        kept.push(m);
        while kept.len() > MAX_KEPT_MODULES
            || kept.iter().map(|k| k.size).sum::<u64>() > MAX_KEPT_BYTES
        {
            kept.remove(0);
        }
    }
}

/// An index (its manifest for the `wasm` architecture) or a manifest (its layers).
fn parse_manifest(media_type: &str, bytes: &[u8]) -> Result<Parsed, String> {
    let m: Manifest = serde_json::from_slice(bytes)
        .map_err(|e| format!("not an image manifest or index: {e}"))?;
    let is_index = INDEX_TYPES.contains(&media_type)
        || INDEX_TYPES.contains(&m.media_type.as_str())
        || (m.layers.is_none() && m.manifests.is_some());
    if is_index {
        let manifests = m.manifests.unwrap_or_default();
        let is_wasm = |d: &Descriptor| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.architecture == WASM_ARCHITECTURE)
        };
        // containerd made the container from the manifest of the node's platform. An index
        // that has one for any platform but wasm (or one without a platform beside others)
        // is a Linux image to it, whatever else it lists: a wasm entry beside it is never
        // what the container was made from, and taking it would let anyone's index that
        // lists a Linux image's manifest (merged by CRI under that image's name, for they
        // share its config) run their module in that image's containers.
        return Ok(match manifests.as_slice() {
            [d] => Parsed::Index(d.clone()),
            all if !all.is_empty() && all.iter().all(is_wasm) => Parsed::Index(all[0].clone()),
            _ => Parsed::Manifest(Arc::default()),
        });
    }
    let config = m.config;
    let layers = m
        .layers
        .ok_or("an image manifest without layers")?
        .into_iter()
        .map(|d| Layer {
            title: d
                .annotations
                .as_ref()
                .and_then(|a| a.get(TITLE_ANNOTATION).cloned()),
            media_type: d.media_type,
            digest: d.digest,
            size: d.size,
        })
        .collect();
    Ok(Parsed::Manifest(Arc::new(ManifestInfo { layers, config })))
}

/// An image config: its architecture and its [`LAYERS_LABEL`].
fn parse_config(bytes: &[u8]) -> Result<Parsed, String> {
    let c: ConfigBlob =
        serde_json::from_slice(bytes).map_err(|e| format!("not an image config: {e}"))?;
    Ok(Parsed::Config(Arc::new(ImageConfig {
        architecture: c.architecture,
        layers_label: c
            .config
            .and_then(|s| s.labels)
            .and_then(|mut l| l.remove(LAYERS_LABEL)),
    })))
}

/// The hex of a `sha256:<64 lower-case hex digits>` digest.
fn sha256_hex(digest: &str) -> Option<&str> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    .then_some(hex)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An error with its sources, which tonic keeps the useful part of ("No such file").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest_of(bytes: &[u8]) -> String {
        format!("sha256:{}", hex(&Sha256::digest(bytes)))
    }

    #[test]
    fn a_manifest_gives_its_layers_with_their_titles() {
        let m = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
            "config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:c","size":2},
            "layers":[{"mediaType":"application/vnd.bytecodealliance.wasm.component.layer.v0+wasm",
                       "digest":"sha256:l","size":8,
                       "annotations":{"org.opencontainers.image.title":"app.wasm"}}]}"#;
        let Parsed::Manifest(m) = parse_manifest("", m).unwrap() else {
            panic!("not a manifest")
        };
        assert_eq!(m.config.as_ref().unwrap().digest, "sha256:c");
        assert_eq!(
            m.layers,
            vec![Layer {
                media_type: wasmedge_aot_protocol::wasm_layer::COMPONENT_LAYER.into(),
                digest: "sha256:l".into(),
                size: 8,
                title: Some("app.wasm".into()),
            }]
        );
    }

    #[test]
    fn an_index_gives_its_wasm_manifest_only_if_it_lists_no_other_platform() {
        let wasm_only = br#"{"schemaVersion":2,"manifests":[
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:w","size":1,
             "platform":{"os":"wasip1","architecture":"wasm"}}]}"#;
        let Parsed::Index(d) = parse_manifest(INDEX_TYPES[0], wasm_only).unwrap() else {
            panic!("not an index")
        };
        assert_eq!(d.digest, "sha256:w");
        // A Linux image's manifest beside a wasm one: containerd made the container from
        // the Linux one, so the index has no Wasm layer for it.
        let mixed = br#"{"schemaVersion":2,"manifests":[
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:a","size":1,
             "platform":{"os":"linux","architecture":"amd64"}},
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:w","size":1,
             "platform":{"os":"wasip1","architecture":"wasm"}}]}"#;
        let Parsed::Manifest(m) = parse_manifest(INDEX_TYPES[0], mixed).unwrap() else {
            panic!("a mixed index is no Wasm image")
        };
        assert!(m.layers.is_empty());
        let linux_only = br#"{"manifests":[
            {"digest":"sha256:a","size":1,"platform":{"os":"linux","architecture":"amd64"}},
            {"digest":"sha256:b","size":1,"platform":{"os":"linux","architecture":"arm64"}}]}"#;
        let Parsed::Manifest(m) = parse_manifest("", linux_only).unwrap() else {
            panic!("a Linux index is no Wasm image")
        };
        assert!(m.layers.is_empty());
        assert!(parse_manifest("", b"[1,2]")
            .unwrap_err()
            .starts_with("not an image manifest or index: "));
    }

    #[test]
    fn a_config_gives_its_architecture_and_its_layers_label() {
        let c = br#"{"architecture":"wasm","os":"wasip1","config":{"Entrypoint":["/app.wasm"],
            "Labels":{"io.wasmedge-aot-shim.wasm-layers":"sha256:m","other":"x"}},
            "rootfs":{"type":"layers","diff_ids":[]}}"#;
        let Parsed::Config(c) = parse_config(c).unwrap() else {
            panic!("not a config")
        };
        assert_eq!(
            *c,
            ImageConfig {
                architecture: "wasm".into(),
                layers_label: Some("sha256:m".into())
            }
        );
        let Parsed::Config(c) = parse_config(br#"{"architecture":"amd64"}"#).unwrap() else {
            panic!("not a config")
        };
        assert_eq!(c.layers_label, None);
        assert!(parse_config(b"\"a string\"").is_err());
    }

    #[test]
    fn digests_must_be_sha256() {
        let d = digest_of(b"x");
        assert_eq!(sha256_hex(&d), d.strip_prefix("sha256:"));
        assert_eq!(sha256_hex("sha512:00"), None);
        assert_eq!(sha256_hex(&d.to_uppercase()), None);
        assert_eq!(sha256_hex("sha256:../../etc"), None);
    }

    /// A reader whose containerd does not exist fails at once, naming the socket.
    #[test]
    fn no_containerd_is_a_clear_error() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let address = dir.path().join("none.sock");
        let layers = ImageLayers::new(
            &format!("unix://{}", address.display()),
            "default",
            WasmLayers::Any,
        );
        let e = rt.block_on(layers.module("c1", "/app.wasm")).unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with(&format!("connect to containerd at {}: ", address.display())),
            "{text}"
        );
    }
}

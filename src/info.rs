//! `containerd-shim-wasmedge-v1 -info`: what the runtime tells containerd 2 about itself.
//!
//! containerd 2 runs a shim binary with `-info`, the runtime's options on stdin, and reads a
//! `containerd.types.RuntimeInfo` from stdout: its name, version, the options back, and the
//! OCI runtime features it implements (the `runc features` document, as runc's shim answers
//! it). CRI derives from the features what it tells the kubelet the handler supports (user
//! namespaces, recursive read-only mounts), so the document says only what both kinds of
//! container this runtime runs honour: a Wasm container's runner and a Linux container's
//! runc. A field it leaves out means "unknown", which containerd takes as not supported.

use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{CodedOutputStream, Message};

/// The `type_url` of OCI runtime features, as runc's shim sends them.
const FEATURES_TYPE_URL: &str =
    "types.containerd.io/opencontainers/runtime-spec/1/features/Features";

/// The largest options message read from stdin (runc's options are a few hundred bytes).
pub const MAX_OPTIONS: u64 = 64 << 10;

/// The OCI features document (runtime-spec `features.md`) of this runtime.
pub fn features() -> serde_json::Value {
    serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.2.0",
        // The hooks the shim runs in the runtime's namespaces (`hooks.rs`); those that run
        // inside the container fail a Wasm container's create.
        "hooks": ["prestart", "createRuntime", "poststart", "poststop"],
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "user", "uts"],
            "cgroup": { "v1": true, "v2": true, "systemd": true, "systemdUser": false },
            "seccomp": { "enabled": true },
            "apparmor": { "enabled": true },
            // SELinux labels fail the create where the host runs SELinux.
            "selinux": { "enabled": false },
            // A user namespace's mounts are not idmapped: CRI then gives no pod of this
            // runtime idmapped volumes.
            "mountExtensions": { "idmap": { "enabled": false } },
        },
    })
}

/// The `RuntimeInfo` message: `name` (1), `version` (2: `version` 1, `revision` 2),
/// `options` (3, the request's, unchanged) and `features` (4, an `Any` of the JSON
/// document).
pub fn runtime_info(name: &str, version: &str, options: &[u8]) -> Vec<u8> {
    let mut any = Any::new();
    any.type_url = FEATURES_TYPE_URL.to_string();
    any.value = serde_json::to_vec(&features()).unwrap_or_default();
    let mut out = Vec::new();
    {
        let mut os = CodedOutputStream::vec(&mut out);
        // Writing to a Vec cannot fail.
        let _ = os.write_string(1, name);
        let _ = os.write_bytes(2, &runtime_version(version));
        if !options.is_empty() {
            let _ = os.write_bytes(3, options);
        }
        let _ = os.write_bytes(4, &any.write_to_bytes().unwrap_or_default());
        let _ = os.flush();
    }
    out
}

fn runtime_version(version: &str) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut os = CodedOutputStream::vec(&mut out);
        let _ = os.write_string(1, version);
        let _ = os.flush();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim_protos::protobuf::CodedInputStream;

    #[test]
    fn the_info_names_the_runtime_echoes_the_options_and_carries_the_features() {
        let options = b"\x0a\x03abc";
        let bytes = runtime_info("io.containerd.wasmedge.v1", "0.1.0", options);
        let mut is = CodedInputStream::from_bytes(&bytes);
        let mut fields = std::collections::BTreeMap::new();
        while let Some(tag) = is.read_raw_tag_or_eof().unwrap() {
            fields.insert(tag >> 3, is.read_bytes().unwrap());
        }
        assert_eq!(fields[&1], b"io.containerd.wasmedge.v1");
        assert_eq!(fields[&2], b"\x0a\x050.1.0");
        assert_eq!(fields[&3], options);
        let any = Any::parse_from_bytes(&fields[&4]).unwrap();
        assert_eq!(any.type_url, FEATURES_TYPE_URL);
        let doc: serde_json::Value = serde_json::from_slice(&any.value).unwrap();
        assert_eq!(doc["linux"]["cgroup"]["systemd"], true);
        assert_eq!(doc["linux"]["mountExtensions"]["idmap"]["enabled"], false);
    }
}

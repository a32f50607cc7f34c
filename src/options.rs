//! The runtime's options: the one setting of containerd's config the shim reads,
//! `SystemdCgroup`, and the rule that holds it against the spec's `linux.cgroupsPath`.
//!
//! containerd hands a shim the runtime's options as `CreateTaskRequest.options`, an `Any`.
//! Its CRI makes them from the runtime's `[...runtimes.NAME.options]` table by the
//! runtime's type (containerd 1.7 `generateRuntimeOptions`, 2.x `GenerateRuntimeOptions`):
//!
//! - for `io.containerd.runc.v2`, `containerd.runc.v1.Options`, whose `systemd_cgroup` is
//!   what runc's shim turns into `runc --systemd-cgroup` (a node that points runc's runtime
//!   type at this binary sends these);
//! - for any other type, ours included, `runtimeoptions.v1.Options`: the table as TOML in
//!   `config_body`, or, when the table sets `ConfigPath`, only that path, whose file then
//!   holds the options (`ctr run --runtime-config-path` sends that too).
//!
//! runc's options come from containerd-shim-protos; `runtimeoptions.v1.Options` is in
//! neither of containerd's Rust crates, so its three fields are read here.
//!
//! containerd also writes the options to the stdin of `shim start`, where containerd-shim's
//! `spawn` reads whatever is there as runc's options and puts the new shim into their
//! `shim_cgroup` (field 3): in `runtimeoptions.v1.Options` field 3 is the table's TOML, so
//! with any options table every start would fail. `start` takes them first
//! ([`take_start_options`]); runc's `ShimCgroup` is not honoured (one node shim serves the
//! containers of every runtime that names this binary).
//!
//! The form of `linux.cgroupsPath` picks the driver ([`CgroupPath::parse`]): CRI writes
//! `slice:prefix:name` when the kubelet's `cgroupDriver` is systemd and a directory when it
//! is cgroupfs. An option that names a driver must agree with that form, as runc refuses a
//! directory under `--systemd-cgroup`: the create fails naming both, rather than placing
//! the container where neither the kubelet nor the operator expects. No `SystemdCgroup` in
//! the options (or no options) leaves the choice to the path.

use std::io::Read;
use std::path::Path;

use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{CodedInputStream, Message};
use containerd_shim_protos::shim::oci::Options as RuncOptions;

use crate::cgroup::CgroupPath;

/// `type_url` of the options CRI makes for runtimes other than runc's.
pub const RUNTIME_OPTIONS_TYPE: &str = "runtimeoptions.v1.Options";
/// `type_url` of runc's options.
pub const RUNC_OPTIONS_TYPE: &str = "containerd.runc.v1.Options";
/// `type_url` of the task options `ctr run` sends (runc's `CreateOptions`).
pub const CREATE_OPTIONS_TYPE: &str = "containerd.linux.runc.CreateOptions";
/// The key of the runtime's options table that names the cgroup driver.
pub const SYSTEMD_CGROUP: &str = "SystemdCgroup";
/// The largest options file read from `ConfigPath` (containerd's tables are a few lines).
pub const MAX_CONFIG_FILE: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum OptionsError {
    #[error(
        "options of type {0:?} are not read by this runtime (it reads {RUNTIME_OPTIONS_TYPE:?}, \
         which containerd's CRI makes from the runtime's options table, and {RUNC_OPTIONS_TYPE:?})"
    )]
    UnknownType(String),
    #[error("{type_url} message: {message}")]
    Decode { type_url: String, message: String },
    #[error("{what}: {message}")]
    Toml { what: String, message: String },
    #[error("{what}: {SYSTEMD_CGROUP} is of type {kind}, not boolean")]
    NotABoolean { what: String, kind: &'static str },
    #[error("the runtime's options on start's stdin: {0}")]
    Stdin(String),
    #[error("read ConfigPath {path}: {message}")]
    ConfigPath { path: String, message: String },
    #[error(
        "{SYSTEMD_CGROUP} = {systemd} in the runtime's options asks for the {wanted} cgroup \
         driver, but linux.cgroupsPath {path:?} is {form}; the kubelet's cgroupDriver and the \
         runtime's {SYSTEMD_CGROUP} must agree"
    )]
    DriverMismatch {
        systemd: bool,
        wanted: &'static str,
        path: String,
        form: &'static str,
    },
}

/// The runtime's options on `start`'s stdin (`None`: none), read to the end so that
/// containerd-shim's `spawn` finds none there (see the module doc). At most
/// [`MAX_CONFIG_FILE`] bytes are read; a message that is not an `Any` is an error.
pub fn take_start_options(mut stdin: impl Read) -> Result<Option<Any>, OptionsError> {
    let mut bytes = Vec::new();
    let err = OptionsError::Stdin;
    (&mut stdin)
        .take(MAX_CONFIG_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| err(e.to_string()))?;
    if bytes.len() as u64 > MAX_CONFIG_FILE {
        return Err(err(format!("larger than {MAX_CONFIG_FILE} bytes")));
    }
    if bytes.is_empty() {
        return Ok(None);
    }
    Any::parse_from_bytes(&bytes)
        .map(Some)
        .map_err(|e| err(e.to_string()))
}

/// `SystemdCgroup` from the runtime's options: `None` when there are none or they do not
/// set it. A message or TOML that cannot be read is an error naming what was read.
pub fn systemd_cgroup(options: Option<&Any>) -> Result<Option<bool>, OptionsError> {
    let Some(any) = options.filter(|a| !a.type_url.is_empty() || !a.value.is_empty()) else {
        return Ok(None);
    };
    // containerd writes the bare message name; a `type.googleapis.com/`-style prefix names
    // the same message.
    let name = any.type_url.rsplit('/').next().unwrap_or_default();
    let decode = |message: String| OptionsError::Decode {
        type_url: any.type_url.clone(),
        message,
    };
    match name {
        RUNC_OPTIONS_TYPE => RuncOptions::parse_from_bytes(&any.value)
            .map(|o| Some(o.systemd_cgroup))
            .map_err(|e| decode(e.to_string())),
        RUNTIME_OPTIONS_TYPE => {
            let o = RuntimeOptions::decode(&any.value).map_err(decode)?;
            if !o.config_path.is_empty() {
                let what = format!("ConfigPath {}", o.config_path);
                let text = read_config_file(Path::new(&o.config_path))?;
                return systemd_cgroup_in_toml(&text, &what);
            }
            let text = String::from_utf8(o.config_body).map_err(|e| OptionsError::Toml {
                what: "ConfigBody".into(),
                message: e.to_string(),
            })?;
            systemd_cgroup_in_toml(&text, "ConfigBody")
        }
        // The task's create options, which `ctr run` sends with `--uidmap`, `--gidmap` and
        // other task flags (runc's `CreateOptions`: io uid/gid, no-pivot, ...): not the
        // runtime's, and they name no cgroup driver.
        CREATE_OPTIONS_TYPE => Ok(None),
        _ => Err(OptionsError::UnknownType(any.type_url.clone())),
    }
}

/// Whether the runtime's options agree with the driver the form of `linux.cgroupsPath`
/// names (see the module doc). A container with no path has no cgroup of its own to place.
pub fn check_cgroup_driver(
    options: Option<&Any>,
    path: Option<&CgroupPath>,
) -> Result<(), OptionsError> {
    let (Some(systemd), Some(path)) = (systemd_cgroup(options)?, path) else {
        return Ok(());
    };
    if systemd == path.is_systemd() {
        return Ok(());
    }
    Err(OptionsError::DriverMismatch {
        systemd,
        wanted: if systemd { "systemd" } else { "cgroupfs" },
        path: path.as_spec().to_string(),
        form: if path.is_systemd() {
            "systemd's slice:prefix:name"
        } else {
            "a cgroupfs directory, not systemd's slice:prefix:name"
        },
    })
}

/// `runtimeoptions.v1.Options`: `type_url` (1), `config_path` (2), `config_body` (3).
#[derive(Debug, Default, PartialEq, Eq)]
struct RuntimeOptions {
    config_path: String,
    config_body: Vec<u8>,
}

impl RuntimeOptions {
    fn decode(bytes: &[u8]) -> Result<RuntimeOptions, String> {
        let mut is = CodedInputStream::from_bytes(bytes);
        let mut o = RuntimeOptions::default();
        let e = |e: containerd_shim_protos::protobuf::Error| e.to_string();
        while let Some(tag) = is.read_raw_tag_or_eof().map_err(e)? {
            match tag {
                // Field 1 (`type_url` of the config file's content) is not used: a
                // length-delimited field, skipped below like an unknown one.
                0x12 => o.config_path = is.read_string().map_err(e)?,
                0x1a => o.config_body = is.read_bytes().map_err(e)?,
                _ => {
                    let wire_type = containerd_shim_protos::protobuf::rt::WireType::new(tag & 7)
                        .ok_or_else(|| format!("bad wire type in tag {tag:#x}"))?;
                    if tag >> 3 == 0 {
                        return Err(format!("field number 0 in tag {tag:#x}"));
                    }
                    is.skip_field(wire_type).map_err(e)?;
                }
            }
        }
        Ok(o)
    }
}

fn read_config_file(path: &Path) -> Result<String, OptionsError> {
    let err = |message: String| OptionsError::ConfigPath {
        path: path.display().to_string(),
        message,
    };
    let file = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
    let mut text = String::new();
    file.take(MAX_CONFIG_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|e| err(e.to_string()))?;
    if text.len() as u64 > MAX_CONFIG_FILE {
        return Err(err(format!("larger than {MAX_CONFIG_FILE} bytes")));
    }
    Ok(text)
}

/// `SystemdCgroup` of a TOML table (containerd's rendering of the runtime's options).
fn systemd_cgroup_in_toml(text: &str, what: &str) -> Result<Option<bool>, OptionsError> {
    let table: toml::Table = toml::from_str(text).map_err(|e| OptionsError::Toml {
        what: what.to_string(),
        message: e.message().to_string(),
    })?;
    match table.get(SYSTEMD_CGROUP) {
        None => Ok(None),
        Some(toml::Value::Boolean(b)) => Ok(Some(*b)),
        Some(other) => Err(OptionsError::NotABoolean {
            what: what.to_string(),
            kind: other.type_str(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim_protos::protobuf::CodedOutputStream;

    /// A `runtimeoptions.v1.Options` as containerd's CRI sends it.
    fn runtime_options(type_url: &str, config_path: &str, body: &[u8]) -> Any {
        let mut value = Vec::new();
        {
            let mut os = CodedOutputStream::vec(&mut value);
            if !type_url.is_empty() {
                os.write_string(1, type_url).unwrap();
            }
            if !config_path.is_empty() {
                os.write_string(2, config_path).unwrap();
            }
            if !body.is_empty() {
                os.write_bytes(3, body).unwrap();
            }
            os.flush().unwrap();
        }
        any(RUNTIME_OPTIONS_TYPE, value)
    }

    fn any(type_url: &str, value: Vec<u8>) -> Any {
        let mut a = Any::new();
        a.type_url = type_url.into();
        a.value = value;
        a
    }

    fn body(text: &str) -> Any {
        runtime_options("", "", text.as_bytes())
    }

    fn fs(path: &str) -> CgroupPath {
        CgroupPath::parse(path).unwrap()
    }

    #[test]
    fn systemd_cgroup_is_read_from_cris_toml_body() {
        assert_eq!(systemd_cgroup(None).unwrap(), None);
        assert_eq!(systemd_cgroup(Some(&Any::new())).unwrap(), None);
        assert_eq!(
            systemd_cgroup(Some(&body("SystemdCgroup = true\n"))).unwrap(),
            Some(true)
        );
        // containerd 2's go-toml v2 rendering, with keys of other runtimes' options.
        let text = "BinaryName = 'x'\nSystemdCgroup = false\n\n[Nested]\nA = 1\n";
        assert_eq!(systemd_cgroup(Some(&body(text))).unwrap(), Some(false));
        // A table without the key (or an empty one) leaves the choice to the path.
        assert_eq!(systemd_cgroup(Some(&body("Other = 1\n"))).unwrap(), None);
        assert_eq!(
            systemd_cgroup(Some(&runtime_options("", "", b""))).unwrap(),
            None
        );
        // Field 1 (the config file's type) is skipped, and a prefixed type URL is the same.
        let mut a = runtime_options("io.x/Config", "", b"SystemdCgroup = true");
        a.type_url = format!("type.googleapis.com/{RUNTIME_OPTIONS_TYPE}");
        assert_eq!(systemd_cgroup(Some(&a)).unwrap(), Some(true));
    }

    #[test]
    fn a_config_path_is_read_instead_of_the_body() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("wasmedge.toml");
        std::fs::write(&file, "SystemdCgroup = true\n").unwrap();
        let path = file.to_str().unwrap();
        let a = runtime_options("", path, b"SystemdCgroup = false");
        assert_eq!(systemd_cgroup(Some(&a)).unwrap(), Some(true));

        let missing = dir.path().join("none.toml");
        let a = runtime_options("", missing.to_str().unwrap(), b"");
        let e = systemd_cgroup(Some(&a)).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("read ConfigPath {}: ", missing.display())),
            "{e}"
        );

        let big = dir.path().join("big.toml");
        std::fs::write(&big, vec![b'#'; MAX_CONFIG_FILE as usize + 1]).unwrap();
        let a = runtime_options("", big.to_str().unwrap(), b"");
        let e = systemd_cgroup(Some(&a)).unwrap_err().to_string();
        assert!(e.ends_with("larger than 1048576 bytes"), "{e}");
    }

    #[test]
    fn runcs_options_are_read_as_runcs_shim_reads_them() {
        let mut o = RuncOptions::new();
        o.systemd_cgroup = true;
        o.binary_name = "runc".into();
        let a = any(RUNC_OPTIONS_TYPE, o.write_to_bytes().unwrap());
        assert_eq!(systemd_cgroup(Some(&a)).unwrap(), Some(true));
        // proto3: false is the field's absence, which runc's shim reads as cgroupfs.
        let a = any(
            RUNC_OPTIONS_TYPE,
            RuncOptions::new().write_to_bytes().unwrap(),
        );
        assert_eq!(systemd_cgroup(Some(&a)).unwrap(), Some(false));
    }

    #[test]
    fn malformed_options_are_errors_that_say_what_was_read() {
        let e = systemd_cgroup(Some(&body("SystemdCgroup = 'yes'\n"))).unwrap_err();
        assert_eq!(
            e.to_string(),
            "ConfigBody: SystemdCgroup is of type string, not boolean"
        );
        let e = systemd_cgroup(Some(&body("SystemdCgroup = \n"))).unwrap_err();
        assert!(e.to_string().starts_with("ConfigBody: "), "{e}");
        assert!(matches!(e, OptionsError::Toml { .. }), "{e}");
        let e = systemd_cgroup(Some(&runtime_options("", "", b"\xff\xfe"))).unwrap_err();
        assert!(
            e.to_string().starts_with("ConfigBody: invalid utf-8"),
            "{e}"
        );

        // A truncated message: config_body's length runs past the end.
        let e =
            systemd_cgroup(Some(&any(RUNTIME_OPTIONS_TYPE, vec![0x1a, 0x10, b'x']))).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("runtimeoptions.v1.Options message: "),
            "{e}"
        );
        // Field 0 and a bad wire type are refused, not skipped.
        for bytes in [vec![0x02, 0x00], vec![0x0f]] {
            let e = systemd_cgroup(Some(&any(RUNTIME_OPTIONS_TYPE, bytes))).unwrap_err();
            assert!(matches!(e, OptionsError::Decode { .. }), "{e}");
        }
        let e = systemd_cgroup(Some(&any(RUNC_OPTIONS_TYPE, vec![0x48]))).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("containerd.runc.v1.Options message: "),
            "{e}"
        );

        // ctr's task options (`--uidmap`): nothing of a driver in them.
        assert_eq!(
            systemd_cgroup(Some(&any(CREATE_OPTIONS_TYPE, vec![0x08, 0x01]))).unwrap(),
            None
        );
        let e = systemd_cgroup(Some(&any("io.example.Options", vec![1]))).unwrap_err();
        assert_eq!(
            e.to_string(),
            "options of type \"io.example.Options\" are not read by this runtime (it reads \
             \"runtimeoptions.v1.Options\", which containerd's CRI makes from the runtime's \
             options table, and \"containerd.runc.v1.Options\")"
        );
    }

    #[test]
    fn starts_stdin_is_taken_whole_and_read_as_an_any() {
        assert!(take_start_options(&b""[..]).unwrap().is_none());
        let sent = body("SystemdCgroup = true\n");
        let bytes = sent.write_to_bytes().unwrap();
        let mut stdin = std::io::Cursor::new(bytes.clone());
        let taken = take_start_options(&mut stdin).unwrap().unwrap();
        assert_eq!(taken, sent);
        assert_eq!(stdin.position(), bytes.len() as u64, "stdin left unread");
        assert_eq!(systemd_cgroup(Some(&taken)).unwrap(), Some(true));

        let e = take_start_options(&[0x0a, 0x7f][..]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("the runtime's options on start's stdin: "),
            "{e}"
        );
        let big = vec![0u8; MAX_CONFIG_FILE as usize + 1];
        let e = take_start_options(&big[..]).unwrap_err();
        assert!(e.to_string().ends_with("larger than 1048576 bytes"), "{e}");
    }

    #[test]
    fn the_option_must_agree_with_the_form_of_the_path() {
        let systemd_path = fs("kubepods-besteffort-pod1.slice:cri-containerd:abc");
        let fs_path = fs("/kubepods/besteffort/pod1/abc");
        let on = body("SystemdCgroup = true");
        let off = body("SystemdCgroup = false");
        for (options, path) in [
            (None, Some(&systemd_path)),
            (None, Some(&fs_path)),
            (Some(&on), Some(&systemd_path)),
            (Some(&off), Some(&fs_path)),
            // No path, no cgroup of the container's own: nothing to place.
            (Some(&on), None),
            (Some(&off), None),
        ] {
            check_cgroup_driver(options, path).unwrap();
        }

        let e = check_cgroup_driver(Some(&on), Some(&fs_path)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "SystemdCgroup = true in the runtime's options asks for the systemd cgroup driver, \
             but linux.cgroupsPath \"/kubepods/besteffort/pod1/abc\" is a cgroupfs directory, \
             not systemd's slice:prefix:name; the kubelet's cgroupDriver and the runtime's \
             SystemdCgroup must agree"
        );
        let e = check_cgroup_driver(Some(&off), Some(&systemd_path)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "SystemdCgroup = false in the runtime's options asks for the cgroupfs cgroup driver, \
             but linux.cgroupsPath \"kubepods-besteffort-pod1.slice:cri-containerd:abc\" is \
             systemd's slice:prefix:name; the kubelet's cgroupDriver and the runtime's \
             SystemdCgroup must agree"
        );
        // A malformed blob fails the check too, whatever the path.
        assert!(check_cgroup_driver(Some(&any("x", vec![])), None).is_err());
    }
}

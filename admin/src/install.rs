//! Installs the shim on a node and registers it as a runtime in containerd's configuration.
//!
//! [`install`] copies the three binaries into a bin directory (temp file, fsync, rename,
//! mode 0755) and adds our runtime table to containerd's `config.toml`:
//!
//! - `version = 2` (containerd 1.x): `[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.NAME]`
//! - `version = 3` (containerd 2.x): `[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.NAME]`
//!
//! with `runtime_type = "io.containerd.wasmedge.v1"`, and in its `options` table the
//! `SystemdCgroup` of the node's runc runtime (the default runtime when it is runc's, else
//! the one named `runc`; `false` when runc's table does not set it, as runc then reads it).
//! containerd's CRI passes that table to the shim, which refuses a container whose
//! `linux.cgroupsPath` has the other driver's form: the kubelet's `cgroupDriver`, runc's
//! and ours then agree, or pods fail for runc and us alike. A config without a runc runtime
//! gets no `SystemdCgroup`, and each path's form picks the driver. A re-install brings the
//! value back in line with runc's. The file is edited structurally with
//! `toml_edit`, so every comment and setting outside our table stays byte for byte. Both steps
//! are idempotent; whenever the config changes, the previous file is kept as
//! `config.toml.bak.<unix-time>`. [`uninstall`] undoes both, removing only a runtime table
//! whose `runtime_type` is ours. containerd reads its config only at start: the report says
//! so, and `restart` restarts it when systemd manages it.
//!
//! The string functions ([`register_runtime`], [`unregister_runtime`],
//! [`registered_runtimes`], [`runtime_systemd_cgroup`]) are pure and hold all the TOML logic.

use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;
use toml_edit::{DocumentMut, Item, Key, Table};
use wasmedge_aot_cache::atomic;

/// The runtime name `install` registers, which a Kubernetes `RuntimeClass` names as `handler`.
pub const DEFAULT_RUNTIME_NAME: &str = "wasmedge";
/// The `runtime_type` containerd maps to the `containerd-shim-wasmedge-v1` binary.
pub const RUNTIME_TYPE: &str = "io.containerd.wasmedge.v1";
/// The node label that says the shim is installed; the RuntimeClass schedules onto it.
pub const NODE_LABEL_KEY: &str = "wasmedge-aot-shim.io/enabled";
pub const NODE_LABEL_VALUE: &str = "true";
pub const NODE_LABEL: (&str, &str) = (NODE_LABEL_KEY, NODE_LABEL_VALUE);
pub const DEFAULT_BIN_DIR: &str = "/usr/local/bin";
pub const DEFAULT_CONTAINERD_CONFIG: &str = "/etc/containerd/config.toml";
/// The binaries `install` copies, in that order.
pub const BINARIES: [&str; 3] = [
    "containerd-shim-wasmedge-v1",
    "wasmedge-shim-runner",
    "wasmedge-shimctl",
];

/// How errors of the pure string functions name the config, before `install` names its file.
const CONFIG_TEXT: &str = "containerd config";

/// The key of a runtime's `options` that names its cgroup driver, runc's and ours.
pub const SYSTEMD_CGROUP: &str = "SystemdCgroup";
/// The `runtime_type` of containerd's runc shim.
pub const RUNC_RUNTIME_TYPE: &str = "io.containerd.runc.v2";

/// CRI plugin id of config version 2 (containerd 1.x).
pub const CRI_PLUGIN_V2: &str = "io.containerd.grpc.v1.cri";
/// CRI runtime plugin id of config version 3 (containerd 2.x).
pub const CRI_PLUGIN_V3: &str = "io.containerd.cri.v1.runtime";

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("parse {path}: {message}")]
    Parse { path: String, message: String },
    #[error(
        "{path}: containerd config version {version} is not supported (expected 2 for containerd 1.x or 3 for containerd 2.x); migrate it with `containerd config migrate`"
    )]
    UnsupportedVersion { path: String, version: String },
    #[error(
        "{path}: runtime {name:?} is already registered with runtime_type {existing:?}, not {RUNTIME_TYPE:?}; use --force to replace it or choose another runtime name"
    )]
    Conflict {
        path: String,
        name: String,
        existing: String,
    },
    #[error("{path}: {key} is not a table, cannot add the runtime under it")]
    NotATable { path: String, key: String },
    #[error("{path}: {key} is not a boolean")]
    NotABoolean { path: String, key: String },
    #[error(
        "{path} does not exist and the containerd version is unknown (`containerd --version`: {detail}); pass the config version (2 for containerd 1.x, 3 for 2.x)"
    )]
    UnknownContainerdVersion { path: String, detail: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> InstallError {
    let context = context.into();
    move |source| InstallError::Io { context, source }
}

/// containerd config file versions we can edit (serialized as the number).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigVersion {
    /// `version = 2`, containerd 1.x.
    V2,
    /// `version = 3`, containerd 2.x.
    V3,
}

impl ConfigVersion {
    pub fn number(self) -> i64 {
        match self {
            ConfigVersion::V2 => 2,
            ConfigVersion::V3 => 3,
        }
    }

    /// The plugin whose `containerd.runtimes` table holds the runtimes.
    pub fn cri_plugin(self) -> &'static str {
        match self {
            ConfigVersion::V2 => CRI_PLUGIN_V2,
            ConfigVersion::V3 => CRI_PLUGIN_V3,
        }
    }

    /// The config version a containerd major version reads: 1.x → 2, 2.x → 3.
    pub fn for_containerd_major(major: u64) -> Option<ConfigVersion> {
        match major {
            1 => Some(ConfigVersion::V2),
            2 => Some(ConfigVersion::V3),
            _ => None,
        }
    }
}

impl Serialize for ConfigVersion {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64(self.number())
    }
}

impl std::str::FromStr for ConfigVersion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "2" => Ok(ConfigVersion::V2),
            "3" => Ok(ConfigVersion::V3),
            other => Err(format!(
                "unsupported containerd config version {other:?} (expected 2 or 3)"
            )),
        }
    }
}

impl fmt::Display for ConfigVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.number())
    }
}

/// The result of editing a config text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edit {
    pub text: String,
    pub changed: bool,
    pub version: ConfigVersion,
    /// What happened to the runtime table.
    pub action: ConfigAction,
    /// The runc runtime whose cgroup driver ours was given; `None` when the config has none
    /// (or the edit removed our runtime).
    pub cgroup_driver: Option<CgroupDriver>,
}

/// Our runtime's `options.SystemdCgroup`, as the node's runc runtime has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CgroupDriver {
    /// The runc runtime it was read from.
    pub runc_runtime: String,
    pub systemd_cgroup: bool,
}

/// What happened to our runtime table in containerd's config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "action", content = "detail")]
pub enum ConfigAction {
    /// The file did not exist and was created with our runtime.
    Created,
    /// The runtime table was added.
    Added,
    /// A runtime of that name with another runtime_type was replaced (`force`).
    Replaced { previous: String },
    /// Already registered with our runtime_type: nothing to do.
    Unchanged,
    /// Already registered; its `options.SystemdCgroup` was set to runc's.
    OptionsUpdated { systemd_cgroup: bool },
    /// The runtime table was removed.
    Removed,
    /// No runtime of that name: nothing to remove.
    Absent,
    /// A runtime of that name is not ours and was left alone.
    NotOurs { runtime_type: String },
}

/// A minimal containerd config of `version` that registers runtime `name`.
pub fn minimal_config(version: ConfigVersion, name: &str) -> String {
    let doc = format!("version = {}\n", version.number());
    // Cannot fail: the input is a valid empty document with a version.
    register_runtime(&doc, name, false)
        .map(|e| e.text)
        .unwrap_or(doc)
}

fn plugin_runtimes<'a>(doc: &'a DocumentMut, plugin: &str) -> Option<&'a Item> {
    doc.get("plugins")?
        .get(plugin)?
        .get("containerd")?
        .get("runtimes")
}

/// `options.SystemdCgroup` of runtime `name` under `plugin`: `None` when the runtime, its
/// options or the key is absent.
fn systemd_cgroup_of(
    doc: &DocumentMut,
    plugin: &str,
    name: &str,
) -> Result<Option<bool>, InstallError> {
    let Some(item) = plugin_runtimes(doc, plugin)
        .and_then(|r| r.get(name))
        .and_then(|r| r.get("options"))
        .and_then(|o| o.get(SYSTEMD_CGROUP))
    else {
        return Ok(None);
    };
    item.as_bool()
        .map(Some)
        .ok_or_else(|| InstallError::NotABoolean {
            path: CONFIG_TEXT.to_string(),
            key: format!("plugins.{plugin:?}.containerd.runtimes.{name}.options.{SYSTEMD_CGROUP}"),
        })
}

/// The node's runc runtime and its cgroup driver: the default runtime when it is runc's,
/// else the runtime named `runc`; `false` when its options do not set `SystemdCgroup`
/// (runc's shim then runs runc without `--systemd-cgroup`).
fn runc_cgroup_driver(
    doc: &DocumentMut,
    version: ConfigVersion,
) -> Result<Option<CgroupDriver>, InstallError> {
    let plugin = version.cri_plugin();
    let Some(runtimes) = plugin_runtimes(doc, plugin) else {
        return Ok(None);
    };
    let default = doc
        .get("plugins")
        .and_then(|p| p.get(plugin))
        .and_then(|p| p.get("containerd"))
        .and_then(|c| c.get("default_runtime_name"))
        .and_then(Item::as_str)
        .unwrap_or("runc");
    let is_runc = |name: &str| {
        runtimes
            .get(name)
            .is_some_and(|r| runtime_type_of(r).starts_with("io.containerd.runc."))
    };
    let Some(name) = [default, "runc"].into_iter().find(|n| is_runc(n)) else {
        return Ok(None);
    };
    Ok(Some(CgroupDriver {
        runc_runtime: name.to_string(),
        systemd_cgroup: systemd_cgroup_of(doc, plugin, name)?.unwrap_or(false),
    }))
}

/// `options.SystemdCgroup` of runtime `name` in a containerd config of either layout (a
/// file or `containerd config dump`): `None` when the runtime, its options or the key is
/// absent. A value that is not a boolean is an error naming the key.
pub fn runtime_systemd_cgroup(config_text: &str, name: &str) -> Result<Option<bool>, InstallError> {
    let doc = parse_doc(config_text)?;
    for plugin in [CRI_PLUGIN_V2, CRI_PLUGIN_V3] {
        if let Some(v) = systemd_cgroup_of(&doc, plugin, name)? {
            return Ok(Some(v));
        }
    }
    Ok(None)
}

fn parse_doc(text: &str) -> Result<DocumentMut, InstallError> {
    text.parse::<DocumentMut>()
        .map_err(|e| InstallError::Parse {
            path: CONFIG_TEXT.to_string(),
            message: e.to_string().trim_end().to_string(),
        })
}

fn doc_version(doc: &DocumentMut) -> Result<ConfigVersion, InstallError> {
    let unsupported = |v: String| InstallError::UnsupportedVersion {
        path: CONFIG_TEXT.to_string(),
        version: v,
    };
    match doc.get("version") {
        None => Err(unsupported("1 (no `version` key)".into())),
        Some(item) => match item.as_integer() {
            Some(2) => Ok(ConfigVersion::V2),
            Some(3) => Ok(ConfigVersion::V3),
            Some(n) => Err(unsupported(n.to_string())),
            None => Err(unsupported(item.to_string().trim().to_string())),
        },
    }
}

/// Walks `path` from `table`, creating missing tables as implicit (no header of their own).
fn ensure_tables<'a>(
    mut table: &'a mut Table,
    path: &[&str],
) -> Result<&'a mut Table, InstallError> {
    let mut walked = Vec::new();
    for key in path {
        walked.push(if key.contains('.') {
            format!("{key:?}")
        } else {
            key.to_string()
        });
        let item = table.entry(key).or_insert_with(|| {
            let mut t = Table::new();
            t.set_implicit(true);
            Item::Table(t)
        });
        table = item.as_table_mut().ok_or_else(|| InstallError::NotATable {
            path: CONFIG_TEXT.to_string(),
            key: walked.join("."),
        })?;
    }
    Ok(table)
}

fn runtimes_path(version: ConfigVersion) -> [&'static str; 4] {
    ["plugins", version.cri_plugin(), "containerd", "runtimes"]
}

fn runtimes_table(doc: &DocumentMut, plugin: &str) -> Option<Vec<(String, Option<String>)>> {
    let runtimes = doc
        .get("plugins")?
        .get(plugin)?
        .get("containerd")?
        .get("runtimes")?
        .as_table_like()?;
    Some(
        runtimes
            .iter()
            .filter_map(|(name, item)| {
                let t = item.as_table_like()?;
                let rt = t
                    .get("runtime_type")
                    .and_then(|v| v.as_str())
                    .map(str::to_string);
                Some((name.to_string(), rt))
            })
            .collect(),
    )
}

fn our_table(systemd_cgroup: Option<bool>) -> Item {
    let mut t = Table::new();
    t.decor_mut().set_prefix("\n");
    let key = Key::new("runtime_type").with_leaf_decor(toml_edit::Decor::new("  ", " "));
    t.insert_formatted(&key, toml_edit::value(RUNTIME_TYPE));
    if let Some(systemd) = systemd_cgroup {
        t.insert("options", options_table(systemd));
    }
    Item::Table(t)
}

/// `options` with `SystemdCgroup`, its header indented under our table's, as containerd's
/// `config default` lays out runc's.
fn options_table(systemd_cgroup: bool) -> Item {
    let mut t = Table::new();
    t.decor_mut().set_prefix("  ");
    let key = Key::new(SYSTEMD_CGROUP).with_leaf_decor(toml_edit::Decor::new("    ", " "));
    t.insert_formatted(&key, toml_edit::value(systemd_cgroup));
    Item::Table(t)
}

/// Sets `options.SystemdCgroup` of our runtime's table `item` (runtime `name`) to
/// `systemd_cgroup`, keeping the rest of the table as it is; whether anything changed.
fn set_systemd_cgroup(
    item: &mut Item,
    name: &str,
    version: ConfigVersion,
    systemd_cgroup: bool,
) -> Result<bool, InstallError> {
    let at = |k: &str| {
        format!(
            "plugins.{:?}.containerd.runtimes.{name}{k}",
            version.cri_plugin()
        )
    };
    let not_a_table = |k: &str| InstallError::NotATable {
        path: CONFIG_TEXT.to_string(),
        key: at(k),
    };
    let header = item.as_table().is_some_and(|t| !t.is_dotted());
    let options: &mut dyn toml_edit::TableLike = match item {
        Item::Table(t) => {
            // Under a table of dotted keys (`runtimes.NAME.runtime_type = ...`), dotted keys.
            let dotted = t.is_dotted();
            let options = t.entry("options").or_insert_with(|| {
                let mut o = Table::new();
                if dotted {
                    o.set_dotted(true);
                } else {
                    o.decor_mut().set_prefix("  ");
                }
                Item::Table(o)
            });
            options
                .as_table_like_mut()
                .ok_or_else(|| not_a_table(".options"))?
        }
        Item::Value(toml_edit::Value::InlineTable(t)) => t
            .entry("options")
            .or_insert_with(|| toml_edit::InlineTable::new().into())
            .as_inline_table_mut()
            .map(|t| t as &mut dyn toml_edit::TableLike)
            .ok_or_else(|| not_a_table(".options"))?,
        _ => return Err(not_a_table("")),
    };
    match options.get_mut(SYSTEMD_CGROUP) {
        Some(Item::Value(v)) if v.as_bool() == Some(systemd_cgroup) => Ok(false),
        // Ours to set: whatever was there (a boolean of the other driver, a string) goes.
        Some(Item::Value(v)) => {
            let decor = v.decor().clone();
            *v = systemd_cgroup.into();
            *v.decor_mut() = decor;
            Ok(true)
        }
        Some(_) => Err(InstallError::NotABoolean {
            path: CONFIG_TEXT.to_string(),
            key: at(&format!(".options.{SYSTEMD_CGROUP}")),
        }),
        None => {
            options.insert(SYSTEMD_CGROUP, toml_edit::value(systemd_cgroup));
            if let Some(mut key) = options.key_mut(SYSTEMD_CGROUP).filter(|_| header) {
                *key.leaf_decor_mut() = toml_edit::Decor::new("    ", " ");
            }
            Ok(true)
        }
    }
}

/// The `runtime_type` of a runtime table, empty when it has none.
fn runtime_type_of(item: &toml_edit::Item) -> String {
    item.as_table_like()
        .and_then(|t| t.get("runtime_type"))
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_string()
}

/// Adds runtime `name` with our `runtime_type` to a containerd config of version 2 or 3.
///
/// A runtime of that name that already has our `runtime_type` is left as it is (any other
/// settings in it too); one with another `runtime_type` is an error unless `force`, which
/// replaces the whole table in place.
pub fn register_runtime(text: &str, name: &str, force: bool) -> Result<Edit, InstallError> {
    let mut doc = parse_doc(text)?;
    let version = doc_version(&doc)?;
    let driver = runc_cgroup_driver(&doc, version)?;
    let runtimes = ensure_tables(doc.as_table_mut(), &runtimes_path(version))?;
    let action = match runtimes.get_mut(name) {
        None => ConfigAction::Added,
        Some(item) => {
            let existing = runtime_type_of(item);
            if existing == RUNTIME_TYPE {
                let updated = match &driver {
                    Some(d) => set_systemd_cgroup(item, name, version, d.systemd_cgroup)?
                        .then_some(d.systemd_cgroup),
                    None => None,
                };
                let Some(systemd_cgroup) = updated else {
                    return Ok(Edit {
                        text: text.to_string(),
                        changed: false,
                        version,
                        action: ConfigAction::Unchanged,
                        cgroup_driver: driver,
                    });
                };
                return Ok(Edit {
                    text: doc.to_string(),
                    changed: true,
                    version,
                    action: ConfigAction::OptionsUpdated { systemd_cgroup },
                    cgroup_driver: driver,
                });
            }
            if !force {
                return Err(InstallError::Conflict {
                    path: CONFIG_TEXT.to_string(),
                    name: name.to_string(),
                    existing,
                });
            }
            ConfigAction::Replaced { previous: existing }
        }
    };
    let mut table = our_table(driver.as_ref().map(|d| d.systemd_cgroup));
    if let (Some(old), Some(new)) = (
        runtimes.get(name).and_then(Item::as_table),
        table.as_table_mut(),
    ) {
        // Replace in place: same position and leading comments.
        new.set_position(old.position());
        *new.decor_mut() = old.decor().clone();
    }
    runtimes.insert(name, table);
    Ok(Edit {
        text: doc.to_string(),
        changed: true,
        version,
        action,
        cgroup_driver: driver,
    })
}

/// Removes runtime `name` if its `runtime_type` is ours; anything else stays untouched.
pub fn unregister_runtime(text: &str, name: &str) -> Result<Edit, InstallError> {
    let mut doc = parse_doc(text)?;
    let version = doc_version(&doc)?;
    let unchanged = |action| Edit {
        text: text.to_string(),
        changed: false,
        version,
        action,
        cgroup_driver: None,
    };
    let Some(runtimes) = doc
        .get_mut("plugins")
        .and_then(|p| p.get_mut(version.cri_plugin()))
        .and_then(|p| p.get_mut("containerd"))
        .and_then(|p| p.get_mut("runtimes"))
        .and_then(Item::as_table_like_mut)
    else {
        return Ok(unchanged(ConfigAction::Absent));
    };
    let Some(item) = runtimes.get(name) else {
        return Ok(unchanged(ConfigAction::Absent));
    };
    let existing = runtime_type_of(item);
    if existing != RUNTIME_TYPE {
        return Ok(unchanged(ConfigAction::NotOurs {
            runtime_type: existing,
        }));
    }
    runtimes.remove(name);
    Ok(Edit {
        text: doc.to_string(),
        changed: true,
        version,
        action: ConfigAction::Removed,
        cgroup_driver: None,
    })
}

/// The runtimes a containerd config registers, as `(name, runtime_type)`, from either
/// layout (version 2 `io.containerd.grpc.v1.cri`, version 3 `io.containerd.cri.v1.runtime`);
/// a runtime without `runtime_type` gets `""`. Works on a config file and on the output of
/// `containerd config dump`.
pub fn registered_runtimes(config_text: &str) -> Result<Vec<(String, String)>, InstallError> {
    let doc = parse_doc(config_text)?;
    let mut out = Vec::new();
    for plugin in [CRI_PLUGIN_V2, CRI_PLUGIN_V3] {
        for (name, rt) in runtimes_table(&doc, plugin).unwrap_or_default() {
            out.push((name, rt.unwrap_or_default()));
        }
    }
    Ok(out)
}

/// The major version in `containerd --version` output, e.g.
/// `containerd github.com/containerd/containerd v1.7.24 <sha>` or
/// `containerd github.com/containerd/containerd 1.7.24~ds1 1.7.24~ds1-6` → 1.
pub fn parse_containerd_major(version_output: &str) -> Option<u64> {
    version_output.split_whitespace().skip(1).find_map(|word| {
        let w = word.strip_prefix('v').unwrap_or(word);
        let (major, rest) = w.split_once('.')?;
        rest.chars().next().filter(char::is_ascii_digit)?;
        major.parse().ok()
    })
}

/// The config version for the installed containerd, from `containerd --version`.
pub fn detect_config_version() -> Result<ConfigVersion, String> {
    let out = Command::new("containerd")
        .arg("--version")
        .output()
        .map_err(|e| format!("run containerd --version: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let major =
        parse_containerd_major(&text).ok_or_else(|| format!("no version in {:?}", text.trim()))?;
    ConfigVersion::for_containerd_major(major)
        .ok_or_else(|| format!("containerd {major}.x is not supported"))
}

/// What [`install`] and [`uninstall`] both act on.
#[derive(Debug, Clone)]
pub struct NodeTarget {
    /// Where the binaries go.
    pub bin_dir: PathBuf,
    /// containerd's config file.
    pub containerd_config: PathBuf,
    /// The runtime name (a RuntimeClass's handler).
    pub runtime_name: String,
    /// Restart containerd after a change of its config.
    pub restart: bool,
}

impl Default for NodeTarget {
    fn default() -> Self {
        NodeTarget {
            bin_dir: PathBuf::from(DEFAULT_BIN_DIR),
            containerd_config: PathBuf::from(DEFAULT_CONTAINERD_CONFIG),
            runtime_name: DEFAULT_RUNTIME_NAME.to_string(),
            restart: false,
        }
    }
}

/// Options of [`install`].
#[derive(Debug, Clone, Default)]
pub struct InstallOptions {
    pub target: NodeTarget,
    /// Where the binaries are copied from; `None` = the directory of the running executable.
    pub source_dir: Option<PathBuf>,
    /// Config version to create when the file is missing; `None` = from `containerd --version`.
    pub config_version: Option<ConfigVersion>,
    /// Replace a runtime of the same name that has another runtime_type.
    pub force: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BinaryAction {
    Installed,
    Updated,
    Unchanged,
    Removed,
    Absent,
}

#[derive(Debug, Clone, Serialize)]
pub struct BinaryReport {
    pub name: String,
    pub path: PathBuf,
    pub action: BinaryAction,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConfigReport {
    pub path: PathBuf,
    pub version: Option<ConfigVersion>,
    pub runtime_name: String,
    #[serde(flatten)]
    pub action: ConfigAction,
    /// The copy of the previous file, when it was changed.
    pub backup: Option<PathBuf>,
    /// `install`: the runc runtime whose `SystemdCgroup` our runtime's options carry; `None`
    /// when the config has no runc runtime (each container's cgroup path then picks the
    /// driver) and after `uninstall`.
    pub cgroup_driver: Option<CgroupDriver>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "restart", content = "detail")]
pub enum RestartOutcome {
    /// Nothing changed in containerd's config: no restart needed.
    NotNeeded,
    /// The config changed; containerd must be restarted to read it.
    Required,
    Restarted {
        how: String,
    },
    Failed {
        reason: String,
    },
}

/// What [`install`] or [`uninstall`] did.
#[derive(Debug, Clone, Serialize)]
pub struct InstallReport {
    /// `install` or `uninstall`.
    pub operation: &'static str,
    pub binaries: Vec<BinaryReport>,
    pub config: ConfigReport,
    /// Whether anything changed on disk.
    pub changed: bool,
    #[serde(flatten)]
    pub restart: RestartOutcome,
    /// Things an operator should know (e.g. the CRI plugin is disabled).
    pub warnings: Vec<String>,
}

impl InstallReport {
    /// Whether the restart that was asked for failed (the CLI exits non-zero on it).
    pub fn restart_failed(&self) -> bool {
        matches!(self.restart, RestartOutcome::Failed { .. })
    }
}

impl fmt::Display for InstallReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.binaries {
            let what = match b.action {
                BinaryAction::Installed => "installed",
                BinaryAction::Updated => "updated",
                BinaryAction::Unchanged => "unchanged",
                BinaryAction::Removed => "removed",
                BinaryAction::Absent => "absent",
            };
            writeln!(f, "{what:<10} {}", b.path.display())?;
        }
        let c = &self.config;
        let version = c
            .version
            .map(|v| format!(" (config version {v})"))
            .unwrap_or_default();
        let what = match &c.action {
            ConfigAction::Created => format!("created with runtime {:?}", c.runtime_name),
            ConfigAction::Added => format!("registered runtime {:?}", c.runtime_name),
            ConfigAction::Replaced { previous } => format!(
                "replaced runtime {:?} (was runtime_type {previous:?})",
                c.runtime_name
            ),
            ConfigAction::Unchanged => {
                format!("runtime {:?} already registered", c.runtime_name)
            }
            ConfigAction::OptionsUpdated { systemd_cgroup } => format!(
                "runtime {:?} already registered; set its options.{SYSTEMD_CGROUP} = {systemd_cgroup}",
                c.runtime_name
            ),
            ConfigAction::Removed => format!("removed runtime {:?}", c.runtime_name),
            ConfigAction::Absent => format!("runtime {:?} not registered", c.runtime_name),
            ConfigAction::NotOurs { runtime_type } => format!(
                "runtime {:?} has runtime_type {runtime_type:?}, not ours: left alone",
                c.runtime_name
            ),
        };
        writeln!(f, "{}{version}: {what}", c.path.display())?;
        let ours = !matches!(
            c.action,
            ConfigAction::NotOurs { .. } | ConfigAction::Removed | ConfigAction::Absent
        );
        match &c.cgroup_driver {
            Some(d) if ours => writeln!(
                f,
                "cgroup driver: {SYSTEMD_CGROUP} = {} in runtime {:?}'s options, as runtime {:?} has it",
                d.systemd_cgroup, c.runtime_name, d.runc_runtime
            )?,
            None if ours => writeln!(
                f,
                "cgroup driver: no runc runtime in the config to match, so runtime {:?} sets no \
                 {SYSTEMD_CGROUP}; each container's cgroup path picks the driver",
                c.runtime_name
            )?,
            _ => {}
        }
        if let Some(b) = &c.backup {
            writeln!(f, "previous config saved as {}", b.display())?;
        }
        for w in &self.warnings {
            writeln!(f, "warning: {w}")?;
        }
        if !self.changed {
            writeln!(f, "nothing changed")?;
        }
        match &self.restart {
            RestartOutcome::NotNeeded => Ok(()),
            RestartOutcome::Required => writeln!(
                f,
                "containerd must be restarted to read its new config (e.g. `systemctl restart containerd`)"
            ),
            RestartOutcome::Restarted { how } => writeln!(f, "restarted containerd ({how})"),
            RestartOutcome::Failed { reason } => writeln!(
                f,
                "could not restart containerd: {reason}; restart it yourself to read its new config"
            ),
        }
    }
}

/// Writes `bytes` to `path` with permissions `mode`, atomically and durably, through the
/// project's one writer (`wasmedge_aot_cache::atomic`: an unpredictable temporary name
/// never followed through a symlink, fsync, rename, fsync of the directory).
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), InstallError> {
    atomic::write_atomic(path, bytes, mode, atomic::Durability::Durable)
        .map_err(io(format!("replace {}", path.display())))
}

fn source_dir(opts: &InstallOptions) -> Result<PathBuf, InstallError> {
    if let Some(d) = &opts.source_dir {
        return Ok(d.clone());
    }
    let exe = std::env::current_exe().map_err(io("find the running executable"))?;
    Ok(exe.parent().map(Path::to_path_buf).unwrap_or_default())
}

fn install_binary(src: &Path, dst: &Path) -> Result<BinaryAction, InstallError> {
    let bytes = std::fs::read(src).map_err(io(format!("read {}", src.display())))?;
    let action = match std::fs::read(dst) {
        Ok(old) => {
            let mode = std::fs::metadata(dst)
                .map(|m| m.permissions().mode() & 0o7777)
                .unwrap_or(0);
            if old == bytes && mode == 0o755 {
                return Ok(BinaryAction::Unchanged);
            }
            BinaryAction::Updated
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BinaryAction::Installed,
        Err(e) => return Err(io(format!("read {}", dst.display()))(e)),
    };
    write_atomic(dst, &bytes, 0o755)?;
    Ok(action)
}

fn unix_time() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Saves `old` next to `path` as `<name>.bak.<unix-time>` (atomically, with `path`'s mode).
fn backup(path: &Path, old: &[u8]) -> Result<PathBuf, InstallError> {
    let mode = std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o644);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut bak = path.with_file_name(format!("{name}.bak.{}", unix_time()));
    let mut n = 1;
    while bak.exists() {
        bak = path.with_file_name(format!("{name}.bak.{}.{n}", unix_time()));
        n += 1;
    }
    write_atomic(&bak, old, mode)?;
    Ok(bak)
}

fn with_path(e: InstallError, path: &Path) -> InstallError {
    let p = path.display().to_string();
    match e {
        InstallError::Parse { message, .. } => InstallError::Parse { path: p, message },
        InstallError::UnsupportedVersion { version, .. } => {
            InstallError::UnsupportedVersion { path: p, version }
        }
        InstallError::Conflict { name, existing, .. } => InstallError::Conflict {
            path: p,
            name,
            existing,
        },
        InstallError::NotATable { key, .. } => InstallError::NotATable { path: p, key },
        other => other,
    }
}

/// Warnings about a config that registers us but would still not run pods.
fn config_warnings(text: &str) -> Vec<String> {
    let Ok(doc) = text.parse::<DocumentMut>() else {
        return Vec::new();
    };
    let disabled = doc
        .get("disabled_plugins")
        .and_then(Item::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str())
                .filter(|p| {
                    *p == "cri" || p.starts_with("io.containerd.grpc.v1.cri") || p.contains(".cri.")
                })
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    disabled
        .into_iter()
        .map(|p| format!("disabled_plugins lists {p:?}: Kubernetes cannot use containerd until it is enabled"))
        .collect()
}

/// Copies the binaries into `opts.target.bin_dir` and registers the runtime in containerd's config.
pub fn install(opts: &InstallOptions) -> Result<InstallReport, InstallError> {
    let target = &opts.target;
    let src_dir = source_dir(opts)?;
    std::fs::create_dir_all(&target.bin_dir)
        .map_err(io(format!("create {}", target.bin_dir.display())))?;
    // All or nothing: a missing source is found before anything is copied.
    for name in BINARIES {
        let src = src_dir.join(name);
        if !src.is_file() {
            return Err(InstallError::Io {
                context: format!("install {name}: {} is not a file", src.display()),
                source: std::io::ErrorKind::NotFound.into(),
            });
        }
    }
    let mut binaries = Vec::new();
    for name in BINARIES {
        let src = src_dir.join(name);
        let dst = target.bin_dir.join(name);
        let same = match (src.canonicalize(), dst.canonicalize()) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        };
        let action = if same {
            BinaryAction::Unchanged
        } else {
            install_binary(&src, &dst)?
        };
        binaries.push(BinaryReport {
            name: name.to_string(),
            path: dst,
            action,
        });
    }

    let path = &target.containerd_config;
    let (old, edit) = match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8(bytes.clone()).map_err(|e| InstallError::Parse {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
            let edit = register_runtime(&text, &target.runtime_name, opts.force)
                .map_err(|e| with_path(e, path))?;
            (Some(bytes), edit)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let version = match opts.config_version {
                Some(v) => v,
                None => detect_config_version().map_err(|detail| {
                    InstallError::UnknownContainerdVersion {
                        path: path.display().to_string(),
                        detail,
                    }
                })?,
            };
            let text = minimal_config(version, &target.runtime_name);
            let edit = Edit {
                text,
                changed: true,
                version,
                action: ConfigAction::Created,
                cgroup_driver: None,
            };
            (None, edit)
        }
        Err(e) => return Err(io(format!("read {}", path.display()))(e)),
    };
    let backup_path = apply(path, old.as_deref(), &edit)?;
    let warnings = config_warnings(&edit.text);
    let changed = edit.changed || binaries.iter().any(|b| b.action != BinaryAction::Unchanged);
    let restart = restart_outcome(edit.changed, target.restart);
    Ok(InstallReport {
        operation: "install",
        binaries,
        config: ConfigReport {
            path: path.clone(),
            version: Some(edit.version),
            runtime_name: target.runtime_name.clone(),
            action: edit.action,
            backup: backup_path,
            cgroup_driver: edit.cgroup_driver,
        },
        changed,
        restart,
        warnings,
    })
}

/// Writes an edit (backup of the previous file first); returns the backup's path.
fn apply(path: &Path, old: Option<&[u8]>, edit: &Edit) -> Result<Option<PathBuf>, InstallError> {
    if !edit.changed {
        return Ok(None);
    }
    let backup_path = match old {
        Some(old) => Some(backup(path, old)?),
        None => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
            }
            None
        }
    };
    let mode = std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o644);
    write_atomic(path, edit.text.as_bytes(), mode)?;
    Ok(backup_path)
}

/// Removes the runtime table (only if it is ours) and the binaries.
pub fn uninstall(target: &NodeTarget) -> Result<InstallReport, InstallError> {
    let path = &target.containerd_config;
    let (version, action, backup_path, config_changed) = match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8(bytes.clone()).map_err(|e| InstallError::Parse {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
            let edit =
                unregister_runtime(&text, &target.runtime_name).map_err(|e| with_path(e, path))?;
            let backup_path = apply(path, Some(&bytes), &edit)?;
            (Some(edit.version), edit.action, backup_path, edit.changed)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            (None, ConfigAction::Absent, None, false)
        }
        Err(e) => return Err(io(format!("read {}", path.display()))(e)),
    };
    let mut binaries = Vec::new();
    for name in BINARIES {
        let dst = target.bin_dir.join(name);
        let action = match std::fs::remove_file(&dst) {
            Ok(()) => BinaryAction::Removed,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BinaryAction::Absent,
            Err(e) => return Err(io(format!("remove {}", dst.display()))(e)),
        };
        binaries.push(BinaryReport {
            name: name.to_string(),
            path: dst,
            action,
        });
    }
    let changed = config_changed || binaries.iter().any(|b| b.action == BinaryAction::Removed);
    Ok(InstallReport {
        operation: "uninstall",
        binaries,
        config: ConfigReport {
            path: path.clone(),
            version,
            runtime_name: target.runtime_name.clone(),
            action,
            backup: backup_path,
            cgroup_driver: None,
        },
        changed,
        restart: restart_outcome(config_changed, target.restart),
        warnings: Vec::new(),
    })
}

fn restart_outcome(config_changed: bool, restart: bool) -> RestartOutcome {
    match (config_changed, restart) {
        (false, _) => RestartOutcome::NotNeeded,
        (true, false) => RestartOutcome::Required,
        (true, true) => match restart_containerd() {
            Ok(how) => RestartOutcome::Restarted { how },
            Err(reason) => RestartOutcome::Failed { reason },
        },
    }
}

/// Restarts containerd through systemd, when systemd is pid 1 and has a containerd unit.
///
/// From a container that shares the host's pid namespace (a privileged DaemonSet with
/// `hostPID`), pid 1 is the host's init: `systemctl` then runs in its mount namespace
/// through `nsenter -t 1 -m`.
pub fn restart_containerd() -> Result<String, String> {
    let init = std::fs::read_to_string("/proc/1/comm")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let same_ns = match (
        std::fs::read_link("/proc/self/ns/mnt"),
        std::fs::read_link("/proc/1/ns/mnt"),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    let argv = systemctl_argv(&init, same_ns)?;
    let command = |args: &[&str]| {
        let mut c = Command::new(argv[0]);
        c.args(&argv[1..]).args(args);
        c
    };
    let how = format!("{} restart containerd", argv.join(" "));
    let out = command(&["show", "--property=LoadState", "--value", "containerd"])
        .output()
        .map_err(|e| format!("run {}: {e}", argv.join(" ")))?;
    let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if state != "loaded" {
        return Err(format!(
            "systemd has no containerd unit (LoadState {state:?})"
        ));
    }
    let out = command(&["restart", "containerd"])
        .output()
        .map_err(|e| format!("run {how}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{how} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(how)
}

/// The command that reaches the host's systemd, given pid 1's name and whether this process
/// shares pid 1's mount namespace.
fn systemctl_argv(init_comm: &str, same_mount_ns: bool) -> Result<Vec<&'static str>, String> {
    if init_comm != "systemd" {
        return Err(format!(
            "containerd is not managed by systemd here (pid 1 is {:?})",
            if init_comm.is_empty() {
                "unknown"
            } else {
                init_comm
            }
        ));
    }
    Ok(if same_mount_ns {
        vec!["systemctl"]
    } else {
        vec!["nsenter", "-t", "1", "-m", "--", "systemctl"]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const V2: &str = r#"# containerd 1.x config, managed by hand
version = 2
root = "/var/lib/containerd"   # keep this comment

[grpc]
  address = "/run/containerd/containerd.sock"

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "registry.k8s.io/pause:3.9"
    [plugins."io.containerd.grpc.v1.cri".containerd]
      default_runtime_name = "runc"
      # runc is the default
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          SystemdCgroup = true

[metrics]
  address = ""   # trailing comment
"#;

    const V3: &str = r#"version = 3

# containerd 2.x
[plugins.'io.containerd.cri.v1.runtime'.containerd]
  default_runtime_name = 'runc'

[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
  runtime_type = 'io.containerd.runc.v2'

[plugins.'io.containerd.cri.v1.images']
  snapshotter = 'overlayfs'
"#;

    const OUR_V2: &str = "\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.wasmedge]\n  runtime_type = \"io.containerd.wasmedge.v1\"\n";
    const OUR_V3: &str = "\n[plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.wasmedge]\n  runtime_type = \"io.containerd.wasmedge.v1\"\n";
    /// What install adds to [`V2`], whose runc runtime has `SystemdCgroup = true`.
    const OUR_V2_SYSTEMD: &str = "\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.wasmedge]\n  runtime_type = \"io.containerd.wasmedge.v1\"\n  [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.wasmedge.options]\n    SystemdCgroup = true\n";
    /// What install adds to [`V3`], whose runc runtime sets no `SystemdCgroup` (runc's false).
    /// In a file whose keys are single-quoted, the headers of our tables reuse their quoting.
    const OUR_V3_CGROUPFS: &str = "\n[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.wasmedge]\n  runtime_type = \"io.containerd.wasmedge.v1\"\n  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.wasmedge.options]\n    SystemdCgroup = false\n";

    #[test]
    fn minimal_configs_are_exactly_what_the_readme_shows() {
        assert_eq!(
            minimal_config(ConfigVersion::V2, "wasmedge"),
            format!("version = 2\n{OUR_V2}")
        );
        assert_eq!(
            minimal_config(ConfigVersion::V3, "wasmedge"),
            format!("version = 3\n{OUR_V3}")
        );
    }

    /// The edited text is the original with exactly our block inserted once.
    fn assert_only_our_block_added(original: &str, edited: &str, block: &str) {
        let at = edited
            .find(block)
            .unwrap_or_else(|| panic!("no {block:?} in:\n{edited}"));
        let rest = format!("{}{}", &edited[..at], &edited[at + block.len()..]);
        assert_eq!(rest, original, "edited:\n{edited}");
    }

    #[test]
    fn v2_insert_keeps_everything_else_byte_for_byte() {
        let e = register_runtime(V2, "wasmedge", false).unwrap();
        assert!(e.changed);
        assert_eq!(e.version, ConfigVersion::V2);
        assert_eq!(e.action, ConfigAction::Added);
        assert_only_our_block_added(V2, &e.text, OUR_V2_SYSTEMD);
        // Our table lands among the other runtimes, before [metrics].
        assert!(e.text.find(OUR_V2_SYSTEMD).unwrap() < e.text.find("[metrics]").unwrap());
        assert_eq!(
            e.cgroup_driver,
            Some(CgroupDriver {
                runc_runtime: "runc".into(),
                systemd_cgroup: true
            })
        );
        assert_eq!(
            runtime_systemd_cgroup(&e.text, "wasmedge").unwrap(),
            Some(true)
        );
        let rts = registered_runtimes(&e.text).unwrap();
        assert_eq!(
            rts,
            vec![
                ("runc".to_string(), "io.containerd.runc.v2".to_string()),
                ("wasmedge".to_string(), RUNTIME_TYPE.to_string())
            ]
        );
    }

    #[test]
    fn v3_insert_keeps_everything_else_byte_for_byte() {
        let e = register_runtime(V3, "wasmedge", false).unwrap();
        assert!(e.changed);
        assert_eq!(e.version, ConfigVersion::V3);
        assert_only_our_block_added(V3, &e.text, OUR_V3_CGROUPFS);
        assert!(e.text.find(OUR_V3_CGROUPFS).unwrap() < e.text.find("cri.v1.images").unwrap());
        assert_eq!(
            runtime_systemd_cgroup(&e.text, "wasmedge").unwrap(),
            Some(false)
        );
        assert!(registered_runtimes(&e.text)
            .unwrap()
            .contains(&("wasmedge".to_string(), RUNTIME_TYPE.to_string())));
    }

    #[test]
    fn insert_into_a_config_without_cri_tables_and_another_name() {
        let text = "version = 2\n# only a comment\n[debug]\n  level = \"info\"";
        let e = register_runtime(text, "wasm-fast", false).unwrap();
        assert_eq!(
            e.text,
            format!("{text}\n\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.wasm-fast]\n  runtime_type = \"io.containerd.wasmedge.v1\"\n")
        );
    }

    #[test]
    fn second_install_changes_nothing() {
        for original in [V2, V3] {
            let once = register_runtime(original, "wasmedge", false).unwrap();
            let twice = register_runtime(&once.text, "wasmedge", false).unwrap();
            assert!(!twice.changed);
            assert_eq!(twice.action, ConfigAction::Unchanged);
            assert_eq!(twice.text, once.text);
        }
    }

    #[test]
    fn uninstall_round_trip_restores_the_original_bytes() {
        for original in [V2, V3] {
            let added = register_runtime(original, "wasmedge", false).unwrap();
            let removed = unregister_runtime(&added.text, "wasmedge").unwrap();
            assert!(removed.changed);
            assert_eq!(removed.action, ConfigAction::Removed);
            assert_eq!(removed.text, original);
            let again = unregister_runtime(&removed.text, "wasmedge").unwrap();
            assert!(!again.changed);
            assert_eq!(again.action, ConfigAction::Absent);
        }
        let created = minimal_config(ConfigVersion::V2, "wasmedge");
        assert_eq!(
            unregister_runtime(&created, "wasmedge").unwrap().text,
            "version = 2\n"
        );
    }

    #[test]
    fn systemd_cgroup_follows_the_default_runc_runtime_else_the_one_named_runc() {
        let runtimes = |default: &str| {
            format!(
                "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  default_runtime_name = \"{default}\"\n\
                 [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n\
                 [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc-systemd]\n  runtime_type = \"io.containerd.runc.v2\"\n\
                 [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc-systemd.options]\n  SystemdCgroup = true\n\
                 [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.kata]\n  runtime_type = \"io.containerd.kata.v2\"\n\
                 [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.kata.options]\n  SystemdCgroup = true\n"
            )
        };
        for (default, runc, systemd) in [
            ("runc-systemd", "runc-systemd", true),
            // runc's table without SystemdCgroup: runc's shim reads false.
            ("runc", "runc", false),
            // A default that is not runc's (kata reads its own options): the runtime `runc`.
            ("kata", "runc", false),
        ] {
            let e = register_runtime(&runtimes(default), "wasmedge", false).unwrap();
            assert_eq!(
                e.cgroup_driver,
                Some(CgroupDriver {
                    runc_runtime: runc.into(),
                    systemd_cgroup: systemd
                }),
                "default {default}"
            );
            assert_eq!(
                runtime_systemd_cgroup(&e.text, "wasmedge").unwrap(),
                Some(systemd)
            );
        }
        // No runc runtime at all: no SystemdCgroup, the cgroup path's form decides.
        let no_runc = "version = 3\n[plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.kata]\n  runtime_type = \"io.containerd.kata.v2\"\n";
        let e = register_runtime(no_runc, "wasmedge", false).unwrap();
        assert_eq!(e.cgroup_driver, None);
        assert_only_our_block_added(no_runc, &e.text, OUR_V3);
        assert_eq!(runtime_systemd_cgroup(&e.text, "wasmedge").unwrap(), None);
    }

    #[test]
    fn reinstall_brings_our_systemd_cgroup_in_line_with_runcs_and_nothing_else() {
        // An install of before SystemdCgroup: the options table is added under ours.
        let old = V2.replace("\n\n[metrics]", &format!("\n{OUR_V2}\n[metrics]"));
        assert_eq!(runtime_systemd_cgroup(&old, "wasmedge").unwrap(), None);
        let e = register_runtime(&old, "wasmedge", false).unwrap();
        assert!(e.changed);
        assert_eq!(
            e.action,
            ConfigAction::OptionsUpdated {
                systemd_cgroup: true
            }
        );
        assert_eq!(
            e.text,
            V2.replace("\n\n[metrics]", &format!("\n{OUR_V2_SYSTEMD}\n[metrics]"))
        );
        let again = register_runtime(&e.text, "wasmedge", false).unwrap();
        assert_eq!(
            (again.changed, again.action),
            (false, ConfigAction::Unchanged)
        );

        // runc moved to cgroupfs since: our value follows, in place, nothing else moves.
        let runc_off = e
            .text
            .replacen("SystemdCgroup = true", "SystemdCgroup = false", 1);
        let e = register_runtime(&runc_off, "wasmedge", false).unwrap();
        assert_eq!(
            e.action,
            ConfigAction::OptionsUpdated {
                systemd_cgroup: false
            }
        );
        assert_eq!(
            e.text,
            runc_off.replace("SystemdCgroup = true", "SystemdCgroup = false")
        );
        // Uninstall takes our options with our table.
        let removed = unregister_runtime(&e.text, "wasmedge").unwrap();
        assert_eq!(
            removed.text,
            V2.replace("SystemdCgroup = true", "SystemdCgroup = false")
        );

        // Our table in dotted and inline forms keeps its form.
        let dotted = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\nruntimes.runc.runtime_type = \"io.containerd.runc.v2\"\nruntimes.runc.options.SystemdCgroup = true\nruntimes.wasmedge.runtime_type = \"io.containerd.wasmedge.v1\"\n";
        let e = register_runtime(dotted, "wasmedge", false).unwrap();
        assert_eq!(
            e.text,
            format!("{dotted}runtimes.wasmedge.options.SystemdCgroup = true\n")
        );
        let inline = "version = 3\n[plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes]\nrunc = { runtime_type = \"io.containerd.runc.v2\", options = { SystemdCgroup = true } }\nwasmedge = { runtime_type = \"io.containerd.wasmedge.v1\", options = { SystemdCgroup = false } }\n";
        let e = register_runtime(inline, "wasmedge", false).unwrap();
        assert_eq!(
            e.text,
            inline.replacen("SystemdCgroup = false", "SystemdCgroup = true", 1)
        );
        for text in [&e.text, dotted] {
            toml::from_str::<toml::Value>(text).unwrap();
        }
    }

    #[test]
    fn a_systemd_cgroup_that_is_not_a_boolean_is_named() {
        let text = V2.replace("SystemdCgroup = true", "SystemdCgroup = \"true\"");
        let e = register_runtime(&text, "wasmedge", false).unwrap_err();
        assert_eq!(
            e.to_string(),
            "containerd config: plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options.SystemdCgroup is not a boolean"
        );
        let e = runtime_systemd_cgroup(&text, "runc").unwrap_err();
        assert!(matches!(e, InstallError::NotABoolean { .. }), "{e}");
        // Ours with a string is install's to set.
        let ours = register_runtime(V2, "wasmedge", false)
            .unwrap()
            .text
            .replace(
                "wasmedge.options]\n    SystemdCgroup = true",
                "wasmedge.options]\n    SystemdCgroup = 'yes'",
            );
        let e = register_runtime(&ours, "wasmedge", false).unwrap();
        assert_eq!(
            runtime_systemd_cgroup(&e.text, "wasmedge").unwrap(),
            Some(true)
        );
    }

    #[test]
    fn a_different_runtime_type_under_our_name_is_reported_not_overwritten() {
        let text = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.wasmedge]\n  runtime_type = \"io.containerd.wasmtime.v1\"\n  theirs = 1\n";
        let e = register_runtime(text, "wasmedge", false).unwrap_err();
        assert!(
            matches!(&e, InstallError::Conflict { existing, .. } if existing == "io.containerd.wasmtime.v1")
        );
        assert!(e.to_string().contains("--force"), "{e}");
        // Uninstall leaves a table that is not ours alone.
        let u = unregister_runtime(text, "wasmedge").unwrap();
        assert!(!u.changed);
        assert_eq!(
            u.action,
            ConfigAction::NotOurs {
                runtime_type: "io.containerd.wasmtime.v1".into()
            }
        );
        // force replaces it in place.
        let f = register_runtime(text, "wasmedge", true).unwrap();
        assert_eq!(
            f.action,
            ConfigAction::Replaced {
                previous: "io.containerd.wasmtime.v1".into()
            }
        );
        assert_eq!(
            registered_runtimes(&f.text).unwrap(),
            vec![("wasmedge".to_string(), RUNTIME_TYPE.to_string())]
        );
        assert!(!f.text.contains("theirs"), "{}", f.text);
    }

    #[test]
    fn version_1_unknown_and_broken_configs_are_clear_errors() {
        let e = register_runtime("disabled_plugins = [\"cri\"]\n", "wasmedge", false).unwrap_err();
        assert!(e.to_string().contains("config version 1"), "{e}");
        let e = register_runtime("version = 4\n", "wasmedge", false).unwrap_err();
        assert!(
            e.to_string().contains("config version 4 is not supported"),
            "{e}"
        );
        let e = register_runtime("version = 2\n[plugins\n", "wasmedge", false).unwrap_err();
        assert!(matches!(e, InstallError::Parse { .. }), "{e}");
        let e = register_runtime("version = 2\nplugins = 1\n", "wasmedge", false).unwrap_err();
        assert!(e.to_string().contains("plugins is not a table"), "{e}");
    }

    #[test]
    fn insert_next_to_dotted_keys_and_refuse_inline_tables() {
        let dotted = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\nruntimes.runc.runtime_type = \"io.containerd.runc.v2\"\n";
        let e = register_runtime(dotted, "wasmedge", false).unwrap();
        let ours = format!("{OUR_V2}  [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.wasmedge.options]\n    SystemdCgroup = false\n");
        assert_only_our_block_added(dotted, &e.text, &ours);
        assert_eq!(registered_runtimes(&e.text).unwrap().len(), 2);
        toml::from_str::<toml::Value>(&e.text).unwrap();

        let root_dotted =
            "version = 2\nplugins.\"io.containerd.grpc.v1.cri\".sandbox_image = \"x\"\n";
        let e = register_runtime(root_dotted, "wasmedge", false).unwrap();
        assert_only_our_block_added(root_dotted, &e.text, OUR_V2);
        toml::from_str::<toml::Value>(&e.text).unwrap();

        let inline = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\nruntimes = { runc = { runtime_type = \"io.containerd.runc.v2\" } }\n";
        let e = register_runtime(inline, "wasmedge", false).unwrap_err();
        assert_eq!(
            e.to_string(),
            "containerd config: plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes is not a table, cannot add the runtime under it"
        );
    }

    #[test]
    fn registered_runtimes_reads_dotted_and_inline_forms() {
        let text = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\nruntimes.runc.runtime_type = \"io.containerd.runc.v2\"\nruntimes.x = { runtime_type = \"io.containerd.x.v1\" }\nruntimes.bare = {}\n";
        assert_eq!(
            registered_runtimes(text).unwrap(),
            vec![
                ("runc".to_string(), "io.containerd.runc.v2".to_string()),
                ("x".to_string(), "io.containerd.x.v1".to_string()),
                ("bare".to_string(), String::new()),
            ]
        );
        assert!(registered_runtimes("").unwrap().is_empty());
    }

    #[test]
    fn containerd_versions_parse() {
        assert_eq!(
            parse_containerd_major("containerd github.com/containerd/containerd v1.7.24 88bf19b2"),
            Some(1)
        );
        assert_eq!(
            parse_containerd_major(
                "containerd github.com/containerd/containerd 1.7.24~ds1 1.7.24~ds1-6+deb13u1"
            ),
            Some(1)
        );
        assert_eq!(
            parse_containerd_major(
                "containerd github.com/containerd/containerd/v2 v2.0.2 c507a0257"
            ),
            Some(2)
        );
        assert_eq!(parse_containerd_major("containerd"), None);
    }

    fn fake_binaries(dir: &Path) {
        for b in BINARIES {
            std::fs::write(dir.join(b), format!("#!/bin/sh\necho {b}\n")).unwrap();
        }
    }

    #[test]
    fn install_and_uninstall_on_disk_are_idempotent_with_backups() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        let bin = tmp.path().join("bin");
        std::fs::create_dir(&src).unwrap();
        fake_binaries(&src);
        let config = tmp.path().join("etc/containerd/config.toml");
        std::fs::create_dir_all(config.parent().unwrap()).unwrap();
        std::fs::write(&config, V2).unwrap();
        let opts = InstallOptions {
            source_dir: Some(src.clone()),
            target: NodeTarget {
                bin_dir: bin.clone(),
                containerd_config: config.clone(),
                ..Default::default()
            },
            ..Default::default()
        };

        let r = install(&opts).unwrap();
        assert!(r.changed);
        assert_eq!(r.config.action, ConfigAction::Added);
        assert_eq!(r.restart, RestartOutcome::Required);
        assert!(r
            .binaries
            .iter()
            .all(|b| b.action == BinaryAction::Installed));
        for b in BINARIES {
            let m = std::fs::metadata(bin.join(b)).unwrap();
            assert_eq!(m.permissions().mode() & 0o7777, 0o755);
        }
        let backup = r.config.backup.clone().unwrap();
        assert_eq!(std::fs::read_to_string(&backup).unwrap(), V2);
        assert!(backup
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("config.toml.bak."));
        assert!(
            r.to_string().contains("containerd must be restarted"),
            "{r}"
        );
        assert!(
            r.to_string().contains(
                "cgroup driver: SystemdCgroup = true in runtime \"wasmedge\"'s options, as runtime \"runc\" has it"
            ),
            "{r}"
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(
            json["config"]["cgroup_driver"],
            serde_json::json!({"runc_runtime": "runc", "systemd_cgroup": true})
        );

        let r2 = install(&opts).unwrap();
        assert!(!r2.changed);
        assert_eq!(r2.config.action, ConfigAction::Unchanged);
        assert_eq!(r2.config.backup, None);
        assert_eq!(r2.restart, RestartOutcome::NotNeeded);
        assert!(r2.to_string().contains("nothing changed"), "{r2}");
        let json = serde_json::to_value(&r2).unwrap();
        assert_eq!(json["config"]["action"], "unchanged");
        assert_eq!(json["config"]["version"], 2);
        assert_eq!(json["restart"], "not_needed");
        assert_eq!(json["changed"], false);

        // A changed binary is updated.
        std::fs::write(src.join(BINARIES[0]), "new").unwrap();
        let r3 = install(&opts).unwrap();
        assert_eq!(r3.binaries[0].action, BinaryAction::Updated);
        assert_eq!(r3.restart, RestartOutcome::NotNeeded);

        let u = uninstall(&NodeTarget {
            bin_dir: bin.clone(),
            containerd_config: config.clone(),
            ..Default::default()
        })
        .unwrap();
        assert!(u.changed);
        assert_eq!(u.config.action, ConfigAction::Removed);
        assert!(u.config.backup.is_some());
        assert_eq!(std::fs::read_to_string(&config).unwrap(), V2);
        assert!(BINARIES.iter().all(|b| !bin.join(b).exists()));
        let u2 = uninstall(&NodeTarget {
            bin_dir: bin,
            containerd_config: config,
            ..Default::default()
        })
        .unwrap();
        assert!(!u2.changed);
        assert!(u2.binaries.iter().all(|b| b.action == BinaryAction::Absent));
    }

    #[test]
    fn a_missing_source_binary_copies_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(BINARIES[0]), "x").unwrap();
        let e = install(&InstallOptions {
            source_dir: Some(tmp.path().to_path_buf()),
            target: NodeTarget {
                bin_dir: tmp.path().join("bin"),
                containerd_config: tmp.path().join("config.toml"),
                ..Default::default()
            },
            config_version: Some(ConfigVersion::V2),
            ..Default::default()
        })
        .unwrap_err();
        assert!(
            e.to_string().starts_with("install wasmedge-shim-runner: "),
            "{e}"
        );
        assert!(!tmp.path().join("bin").join(BINARIES[0]).exists());
        assert!(!tmp.path().join("config.toml").exists());
    }

    #[test]
    fn a_missing_config_is_created_with_the_requested_version() {
        let tmp = tempfile::tempdir().unwrap();
        fake_binaries(tmp.path());
        let config = tmp.path().join("new/config.toml");
        let r = install(&InstallOptions {
            source_dir: Some(tmp.path().to_path_buf()),
            target: NodeTarget {
                bin_dir: tmp.path().join("bin"),
                containerd_config: config.clone(),
                ..Default::default()
            },
            config_version: Some(ConfigVersion::V3),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(r.config.action, ConfigAction::Created);
        assert_eq!(r.config.backup, None);
        assert_eq!(
            std::fs::read_to_string(&config).unwrap(),
            format!("version = 3\n{OUR_V3}")
        );
    }

    #[test]
    fn restart_goes_through_the_hosts_systemd_or_says_why_not() {
        assert_eq!(systemctl_argv("systemd", true).unwrap(), ["systemctl"]);
        assert_eq!(
            systemctl_argv("systemd", false).unwrap().join(" "),
            "nsenter -t 1 -m -- systemctl"
        );
        let e = systemctl_argv("tini", true).unwrap_err();
        assert_eq!(
            e,
            "containerd is not managed by systemd here (pid 1 is \"tini\")"
        );
        // Where systemd is not pid 1 (CI), asking for a restart reports why it failed.
        if std::fs::read_to_string("/proc/1/comm").is_ok_and(|c| c.trim() != "systemd") {
            assert!(matches!(
                restart_outcome(true, true),
                RestartOutcome::Failed { reason } if reason.contains("not managed by systemd")
            ));
        }
        assert_eq!(restart_outcome(false, true), RestartOutcome::NotNeeded);
        assert_eq!(restart_outcome(true, false), RestartOutcome::Required);
    }

    #[test]
    fn disabled_cri_plugin_is_warned_about() {
        let w =
            config_warnings("version = 2\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n");
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("disabled_plugins"), "{w:?}");
    }
}

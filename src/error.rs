//! The shim's errors, and their one mapping to the ttrpc codes containerd understands; and
//! why a spec is refused ([`SpecError`]), by the reading of the spec (`spec.rs`) and by the
//! parts of it other modules read themselves (the hooks).

use containerd_shim::protos::ttrpc;

#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("container {0} not found")]
    NotFound(String),
    #[error("container {0} already exists")]
    AlreadyExists(String),
    #[error("container {id}: {message}")]
    FailedPrecondition { id: String, message: String },
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0} is not supported by the wasmedge shim")]
    Unsupported(&'static str),
    #[error("container {id}: {context}: {message}")]
    Create {
        id: String,
        context: &'static str,
        message: String,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Shim(#[from] containerd_shim::Error),
}

/// The steps of a create whose failure is the request's: what it asks is wrong or refused.
const REQUEST_STEPS: &[&str] = &[
    "spec",
    "runtime options",
    "entrypoint",
    "cwd",
    "seccomp",
    "namespaces",
];

impl ShimError {
    /// A `map_err` for a step of container `id`'s create that failed: the error names the
    /// container and the step (`context`).
    pub fn create<E: std::fmt::Display>(
        id: &str,
        context: &'static str,
    ) -> impl FnOnce(E) -> ShimError {
        let id = id.to_owned();
        move |e| ShimError::Create {
            id,
            context,
            message: e.to_string(),
        }
    }

    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ShimError {
        let context = context.into();
        move |source| ShimError::Io { context, source }
    }

    fn code(&self) -> ttrpc::Code {
        match self {
            ShimError::NotFound(_) => ttrpc::Code::NOT_FOUND,
            ShimError::AlreadyExists(_) => ttrpc::Code::ALREADY_EXISTS,
            ShimError::FailedPrecondition { .. } => ttrpc::Code::FAILED_PRECONDITION,
            ShimError::InvalidArgument(_) => ttrpc::Code::INVALID_ARGUMENT,
            // The request's own fault: its spec, options, entrypoint; anything else (the
            // kernel, the runner, runc, a hook, the rootfs) is not the caller's to fix by
            // asking differently, and says nothing more certain than that (runc's errors
            // reach containerd as UNKNOWN too).
            ShimError::Create { context, .. } if REQUEST_STEPS.contains(context) => {
                ttrpc::Code::INVALID_ARGUMENT
            }
            ShimError::Create { .. } => ttrpc::Code::UNKNOWN,
            ShimError::Unsupported(_) => ttrpc::Code::UNIMPLEMENTED,
            ShimError::Io { .. } | ShimError::Shim(_) => ttrpc::Code::INTERNAL,
        }
    }
}

impl From<ShimError> for ttrpc::Error {
    fn from(e: ShimError) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code_of(e: ShimError) -> ttrpc::Code {
        match ttrpc::Error::from(e) {
            ttrpc::Error::RpcStatus(s) => s.code(),
            other => panic!("not a status: {other:?}"),
        }
    }

    #[test]
    fn errors_map_to_the_codes_containerd_checks() {
        assert_eq!(
            code_of(ShimError::NotFound("a".into())),
            ttrpc::Code::NOT_FOUND
        );
        assert_eq!(
            code_of(ShimError::AlreadyExists("a".into())),
            ttrpc::Code::ALREADY_EXISTS
        );
        assert_eq!(
            code_of(ShimError::Unsupported("exec")),
            ttrpc::Code::UNIMPLEMENTED
        );
        assert_eq!(
            code_of(ShimError::FailedPrecondition {
                id: "a".into(),
                message: "running".into()
            }),
            ttrpc::Code::FAILED_PRECONDITION
        );
    }

    #[test]
    fn a_create_fails_as_invalid_only_for_the_requests_own_fault() {
        let create = |context| ShimError::Create {
            id: "c1".into(),
            context,
            message: "m".into(),
        };
        assert_eq!(code_of(create("spec")), ttrpc::Code::INVALID_ARGUMENT);
        assert_eq!(code_of(create("entrypoint")), ttrpc::Code::INVALID_ARGUMENT);
        for runtime in [
            "cgroup",
            "hooks",
            "start container process",
            "linux container",
        ] {
            assert_eq!(code_of(create(runtime)), ttrpc::Code::UNKNOWN, "{runtime}");
        }
    }

    #[test]
    fn messages_name_the_container() {
        let e = ShimError::Create {
            id: "c1".into(),
            context: "load module",
            message: "magic header not detected".into(),
        };
        assert_eq!(
            e.to_string(),
            "container c1: load module: magic header not detected"
        );
    }
}

/// A spec this runtime cannot run as asked; each names the field.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("spec has no process")]
    NoProcess,
    #[error("spec process has no args: the first arg names the wasm module")]
    NoArgs,
    #[error("{field}: {message}")]
    Unsupported { field: String, message: String },
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
}

pub(crate) fn unsupported(field: impl Into<String>, message: impl Into<String>) -> SpecError {
    SpecError::Unsupported {
        field: field.into(),
        message: message.into(),
    }
}

pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> SpecError {
    SpecError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

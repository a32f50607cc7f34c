//! What a file's first eight bytes say about it as Wasm, read once per module: whether a
//! container's entrypoint is ours to run (the magic) and whether it is a module this
//! runtime runs (core Wasm, version 1), for a module from the rootfs and from an image's
//! Wasm layer alike.

use std::fs::File;
use std::os::unix::fs::FileExt;

/// The head of a file, as Wasm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// `\0asm`, version 1: a core module.
    Core,
    /// `\0asm` and another version word: a component, or a version this runtime does not
    /// know.
    Other([u8; 4]),
    /// The magic and fewer than eight bytes: ours to refuse, not runc's to run.
    Truncated,
    /// No Wasm magic.
    NotWasm,
}

impl Header {
    /// Reads the first eight bytes of `file` (at offset 0, whatever the file's offset).
    pub fn of(file: &File) -> Header {
        let mut head = [0u8; 8];
        match file.read_at(&mut head, 0) {
            Ok(n) if n >= 4 && head[..4] == *b"\0asm" => {
                let [_, _, _, _, a, b, c, d] = head;
                match [a, b, c, d] {
                    _ if n < 8 => Header::Truncated,
                    [1, 0, 0, 0] => Header::Core,
                    version => Header::Other(version),
                }
            }
            _ => Header::NotWasm,
        }
    }

    pub fn is_wasm(self) -> bool {
        self != Header::NotWasm
    }

    /// Refuses anything but a core module, naming the module `name`, before a process is
    /// forked for it.
    pub fn check(self, name: &str) -> Result<(), String> {
        match self {
            Header::Core => Ok(()),
            Header::Other(version) => Err(format!(
                "{name} is a wasm component or unknown version ({version:02x?}); only core \
                 modules run"
            )),
            Header::Truncated | Header::NotWasm => {
                Err(format!("{name} is not a wasm module (no \\0asm magic)"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn header_of(bytes: &[u8]) -> Header {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        Header::of(&f)
    }

    #[test]
    fn a_head_is_a_core_module_another_wasm_or_none() {
        assert_eq!(header_of(b"\0asm\x01\0\0\0\x01\x04"), Header::Core);
        let component = header_of(b"\0asm\x0d\0\x01\0");
        assert_eq!(component, Header::Other([0x0d, 0, 1, 0]));
        assert!(component.is_wasm());
        assert!(component
            .check("/c.wasm")
            .unwrap_err()
            .contains("component"));
        for (bytes, header) in [
            (&b""[..], Header::NotWasm),
            (b"\x7fELF\x02\x01\x01\0", Header::NotWasm),
            (b"\0asm", Header::Truncated),
            (b"\0asm\x01\0\0", Header::Truncated),
        ] {
            let h = header_of(bytes);
            assert_eq!(h, header, "{bytes:?}");
            assert_eq!(h.is_wasm(), header == Header::Truncated);
            assert!(h.check("/x").unwrap_err().contains("no \\0asm magic"));
        }
    }
}

//! The shape a compiled library must have before the cache publishes it.
//!
//! Libraries are loaded with `dlopen` by processes that are still root: a module's zygote,
//! a container process before its credentials drop. The worker that wrote one ran a
//! tenant's bytes through LLVM, so a module that took the worker over (`sandbox`,
//! `confine`) would have one way back to root: the library. `dlopen` runs an object's
//! constructors (`DT_INIT`, `DT_INIT_ARRAY`, `DT_PREINIT_ARRAY`), loads and runs the
//! libraries it names (`DT_NEEDED`, found through its `DT_RPATH`/`DT_RUNPATH`), and calls
//! its IFUNC resolvers while relocating it; `dlsym` of an IFUNC symbol calls the resolver
//! too. WasmEdge's AOT libraries need none of that: their dynamic section holds only the
//! symbol and hash tables (no relocation, no library, no constructor), and loading them
//! maps pages and runs none of their code. So the compile process publishes a library only
//! of that shape: an ELF shared object for this machine, segments only of the kinds a
//! linker writes for one (no interpreter, no TLS), none both writable and executable, a
//! non-executable stack, a dynamic section of exactly those tables, and no IFUNC among the
//! symbols either hash table reaches. Anything else fails the compile as the compiler's.
//!
//! The file is read once, with every offset and count bounded by its size.

use std::path::Path;

use object::elf::{self, FileHeader64, ProgramHeader64, Sym64};
use object::read::elf::{Dyn, FileHeader, ProgramHeader};
use object::{Endianness, ReadRef};

type Header = FileHeader64<Endianness>;

/// Why a library is not published.
#[derive(Debug, thiserror::Error)]
#[error("the compiled library {path}: {reason}")]
pub struct ShapeError {
    pub path: String,
    pub reason: String,
}

/// The machine a library must be built for.
#[cfg(target_arch = "x86_64")]
const MACHINE: u16 = elf::EM_X86_64;
#[cfg(target_arch = "aarch64")]
const MACHINE: u16 = elf::EM_AARCH64;

/// The dynamic tags a WasmEdge library carries.
const DYNAMIC_TAGS: &[u32] = &[
    elf::DT_NULL,
    elf::DT_SYMTAB,
    elf::DT_SYMENT,
    elf::DT_STRTAB,
    elf::DT_STRSZ,
    elf::DT_HASH,
    elf::DT_GNU_HASH,
];

/// Checks the library at `path`.
pub fn check(path: &Path) -> Result<(), ShapeError> {
    let data = std::fs::read(path).map_err(|e| ShapeError {
        path: path.display().to_string(),
        reason: format!("read: {e}"),
    })?;
    shape(&data).map_err(|reason| ShapeError {
        path: path.display().to_string(),
        reason,
    })
}

fn shape(data: &[u8]) -> Result<(), String> {
    let header = Header::parse(data).map_err(|e| format!("not an ELF64 object: {e}"))?;
    let endian = header.endian().map_err(|e| e.to_string())?;
    if header.e_type(endian) != elf::ET_DYN {
        return Err("not a shared object".into());
    }
    if header.e_machine(endian) != MACHINE {
        return Err(format!(
            "built for machine {}, not this one's",
            header.e_machine(endian)
        ));
    }
    let segments = header
        .program_headers(endian, data)
        .map_err(|e| format!("program headers: {e}"))?;
    let mut dynamic = None;
    for ph in segments {
        let flags = ph.p_flags(endian);
        match ph.p_type(endian) {
            elf::PT_LOAD if flags & elf::PF_W != 0 && flags & elf::PF_X != 0 => {
                return Err("a segment both writable and executable".into())
            }
            elf::PT_GNU_STACK if flags & elf::PF_X != 0 => return Err("an executable stack".into()),
            elf::PT_DYNAMIC => {
                if dynamic.is_some() {
                    return Err("two dynamic segments".into());
                }
                dynamic = Some(
                    ph.dynamic(endian, data)
                        .map_err(|e| format!("dynamic section: {e}"))?
                        .unwrap_or_default(),
                );
            }
            elf::PT_LOAD
            | elf::PT_GNU_STACK
            | elf::PT_PHDR
            | elf::PT_NOTE
            | elf::PT_GNU_EH_FRAME
            | elf::PT_GNU_RELRO
            | elf::PT_GNU_PROPERTY => {}
            other => return Err(format!("a segment of type {other:#x}")),
        }
    }
    let dynamic = dynamic.ok_or("no dynamic section")?;
    let (mut symtab, mut hash, mut gnu_hash) = (None, None, None);
    for d in dynamic {
        let tag = d.tag32(endian).unwrap_or(u32::MAX);
        if !DYNAMIC_TAGS.contains(&tag) {
            return Err(format!(
                "dynamic entry {:#x}: only the symbol and hash tables may be there \
                 (no library, constructor or relocation)",
                d.d_tag(endian)
            ));
        }
        let at = Some(d.d_val(endian));
        match tag {
            elf::DT_SYMTAB => symtab = at,
            elf::DT_HASH => hash = at,
            elf::DT_GNU_HASH => gnu_hash = at,
            elf::DT_SYMENT
                if d.d_val(endian) != std::mem::size_of::<Sym64<Endianness>>() as u64 =>
            {
                return Err("a symbol size that is not ELF64's".into())
            }
            elf::DT_NULL => break,
            _ => {}
        }
    }
    let symtab = offset(segments, endian, symtab.ok_or("no symbol table")?)?;
    let symbol = |index: u64| -> Result<(), String> {
        let at = symtab + index * std::mem::size_of::<Sym64<Endianness>>() as u64;
        let sym: &Sym64<Endianness> = data
            .read_at(at)
            .map_err(|()| format!("symbol {index} outside the file"))?;
        if sym.st_type() == elf::STT_GNU_IFUNC {
            return Err(format!("symbol {index} is an IFUNC"));
        }
        Ok(())
    };
    // Every symbol the loader can reach: DT_HASH's chain covers 0..nchain, GNU_HASH's
    // buckets and chains whatever indices they hold.
    if let Some(hash) = hash {
        let at = offset(segments, endian, hash)?;
        let nchain = u32_at(data, endian, at + 4)?;
        for index in 0..u64::from(nchain) {
            symbol(index)?;
        }
    }
    if let Some(gnu) = gnu_hash {
        let at = offset(segments, endian, gnu)?;
        let nbuckets = u64::from(u32_at(data, endian, at)?);
        let symoffset = u64::from(u32_at(data, endian, at + 4)?);
        let bloom_words = u64::from(u32_at(data, endian, at + 8)?);
        let buckets = at + 16 + bloom_words * 8;
        let chains = buckets + nbuckets * 4;
        for b in 0..nbuckets {
            let mut index = u64::from(u32_at(data, endian, buckets + b * 4)?);
            if index == 0 {
                continue;
            }
            if index < symoffset {
                return Err("a GNU hash bucket below its first symbol".into());
            }
            loop {
                symbol(index)?;
                let chain = u32_at(data, endian, chains + (index - symoffset) * 4)?;
                if chain & 1 == 1 {
                    break;
                }
                index += 1;
            }
        }
    }
    Ok(())
}

/// The file offset of virtual address `vaddr`, through the loadable segments.
fn offset(
    segments: &[ProgramHeader64<Endianness>],
    endian: Endianness,
    vaddr: u64,
) -> Result<u64, String> {
    segments
        .iter()
        .filter(|ph| ph.p_type(endian) == elf::PT_LOAD)
        .find_map(|ph| {
            let start = ph.p_vaddr(endian);
            (vaddr >= start && vaddr - start < ph.p_filesz(endian))
                .then(|| ph.p_offset(endian) + (vaddr - start))
        })
        .ok_or_else(|| format!("address {vaddr:#x} in no loadable segment"))
}

fn u32_at(data: &[u8], endian: Endianness, at: u64) -> Result<u32, String> {
    let v: &object::U32Bytes<Endianness> = data
        .read_at(at)
        .map_err(|()| format!("offset {at:#x} outside the file"))?;
    Ok(v.get(endian))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// A shared object built by the system's gcc from `c`, with `flags`.
    fn build(c: &str, flags: &[&str]) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("lib.c");
        std::fs::write(&src, c).unwrap();
        let out = dir.path().join("lib.so");
        let status = Command::new("gcc")
            .args(["-shared", "-fPIC", "-O2", "-o"])
            .arg(&out)
            .arg(&src)
            .args(flags)
            .status()
            .unwrap();
        assert!(status.success());
        (dir, out)
    }

    /// What WasmEdge writes: functions and constant data, no library, no relocation.
    const PLAIN: &str = "int f(int x) { return x + 1; }\nconst int table[4] = {1, 2, 3, 4};\n";
    const BARE: &[&str] = &["-nostdlib", "-Wl,--hash-style=both", "-Wl,-z,norelro"];

    #[test]
    fn a_library_of_wasmedges_shape_passes() {
        let (_d, lib) = build(PLAIN, BARE);
        check(&lib).unwrap();
    }

    #[test]
    fn constructors_libraries_relocations_and_ifuncs_are_refused() {
        let cases: [(&str, &str, &[&str]); 4] = [
            (
                "volatile int x;\n__attribute__((constructor)) static void c(void) { x = 1; }\n",
                "only the symbol and hash tables",
                BARE,
            ),
            (
                PLAIN,
                "only the symbol and hash tables",
                &["-Wl,--hash-style=both"],
            ),
            (
                "int g;\nint *p = &g;\n",
                "only the symbol and hash tables",
                BARE,
            ),
            (
                "static int r(void) { return 1; }\nstatic void *res(void) { return (void *)r; }\n\
                 int f(void) __attribute__((ifunc(\"res\")));\n",
                "",
                BARE,
            ),
        ];
        for (c, why, flags) in cases {
            let (_d, lib) = build(c, flags);
            let e = check(&lib).expect_err(c).to_string();
            assert!(e.contains(why), "{c}: {e}");
        }
    }

    #[test]
    fn what_is_no_shared_object_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x.so");
        std::fs::write(&f, b"\x7fELF not really").unwrap();
        assert!(check(&f).unwrap_err().to_string().contains("not an ELF64"));
        std::fs::write(&f, []).unwrap();
        assert!(check(&f).is_err());
    }
}

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

use object::elf::{self, FileHeader64, Sym64};
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

/// Checks the library at `path`, compiled from `module`.
pub fn check(path: &Path, module: &[u8]) -> Result<(), ShapeError> {
    let data = std::fs::read(path).map_err(|e| ShapeError {
        path: path.display().to_string(),
        reason: format!("read: {e}"),
    })?;
    shape(&data, module).map_err(|reason| ShapeError {
        path: path.display().to_string(),
        reason,
    })
}

/// A loadable segment, as the loader maps it.
#[derive(Clone, Copy)]
struct Segment {
    vaddr: u64,
    offset: u64,
    filesz: u64,
    memsz: u64,
    flags: u32,
}

const PAGE: u64 = 4096;
/// `e_phnum`'s escape to a count in section 0, which glibc does not read.
const PN_XNUM: u16 = 0xffff;

fn shape(data: &[u8], module: &[u8]) -> Result<(), String> {
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
    if header.e_phnum.get(endian) == PN_XNUM {
        return Err("a program header count in section 0 (PN_XNUM)".into());
    }
    let phdrs = header
        .program_headers(endian, data)
        .map_err(|e| format!("program headers: {e}"))?;
    let mut loads = Vec::new();
    let (mut dynamic, mut stack) = (None, false);
    for ph in phdrs {
        let flags = ph.p_flags(endian);
        let seg = Segment {
            vaddr: ph.p_vaddr(endian),
            offset: ph.p_offset(endian),
            filesz: ph.p_filesz(endian),
            memsz: ph.p_memsz(endian),
            flags,
        };
        match ph.p_type(endian) {
            elf::PT_LOAD => {
                if flags & elf::PF_W != 0 && flags & elf::PF_X != 0 {
                    return Err("a segment both writable and executable".into());
                }
                loads.push(seg);
            }
            elf::PT_GNU_STACK if flags & elf::PF_X != 0 => return Err("an executable stack".into()),
            elf::PT_GNU_STACK => stack = true,
            elf::PT_DYNAMIC if dynamic.is_some() => return Err("two dynamic segments".into()),
            elf::PT_DYNAMIC => dynamic = Some(seg),
            elf::PT_PHDR
            | elf::PT_NOTE
            | elf::PT_GNU_EH_FRAME
            | elf::PT_GNU_RELRO
            | elf::PT_GNU_PROPERTY => {}
            other => return Err(format!("a segment of type {other:#x}")),
        }
    }
    // Without the header, older C libraries make every stack of the loading process
    // executable.
    if !stack {
        return Err("no stack segment (PT_GNU_STACK)".into());
    }
    // The loader maps the segments in order, each over what the one before left: they must
    // not overlap, even by a page, or what the loader sees is not what is read here.
    for seg in &loads {
        let in_file = seg
            .offset
            .checked_add(seg.filesz)
            .is_some_and(|end| end <= data.len() as u64);
        if seg.filesz > seg.memsz || !in_file || seg.offset % PAGE != seg.vaddr % PAGE {
            return Err(format!("a malformed loadable segment at {:#x}", seg.vaddr));
        }
    }
    for pair in loads.windows(2) {
        let end = (pair[0].vaddr + pair[0].memsz).div_ceil(PAGE) * PAGE;
        if end > pair[1].vaddr / PAGE * PAGE {
            return Err("loadable segments out of order or overlapping".into());
        }
    }
    let map = Map {
        data,
        loads: &loads,
    };
    let dynamic = dynamic.ok_or("no dynamic section")?;
    // The loader reads the dynamic array at its address, up to its DT_NULL: it must be the
    // bytes the header's offset names, and end within them.
    if map.offset(dynamic.vaddr, dynamic.filesz)? != dynamic.offset {
        return Err("the dynamic segment's offset and address disagree".into());
    }
    let entry = std::mem::size_of::<elf::Dyn64<Endianness>>() as u64;
    let (mut symtab, mut strtab, mut hash, mut gnu_hash, mut ended) =
        (None, None, None, None, false);
    for i in 0..dynamic.filesz / entry {
        let d: &elf::Dyn64<Endianness> = map.read(dynamic.vaddr + i * entry)?;
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
            elf::DT_STRTAB => strtab = at,
            elf::DT_HASH => hash = at,
            elf::DT_GNU_HASH => gnu_hash = at,
            elf::DT_SYMENT
                if d.d_val(endian) != std::mem::size_of::<Sym64<Endianness>>() as u64 =>
            {
                return Err("a symbol size that is not ELF64's".into())
            }
            elf::DT_NULL => {
                ended = true;
                break;
            }
            _ => {}
        }
    }
    if !ended {
        return Err("a dynamic section without its end (DT_NULL)".into());
    }
    let symtab = symtab.ok_or("no symbol table")?;
    let strtab = strtab.ok_or("no string table")?;
    let sym_size = std::mem::size_of::<Sym64<Endianness>>() as u64;
    // Where the library embeds its module (`wasm.code`) and that module's size
    // (`wasm.size`): WasmEdge parses and validates those bytes when it loads the library.
    let embedded = std::cell::Cell::new((None, None));
    let symbol = |index: u64| -> Result<(), String> {
        // The null symbol, which every table starts with.
        if index == 0 {
            return Ok(());
        }
        let sym: &Sym64<Endianness> = map.read(symtab + index * sym_size)?;
        let section = sym.st_shndx.get(endian);
        if section == elf::SHN_UNDEF || section >= elf::SHN_LORESERVE {
            return Err(format!(
                "symbol {index} is undefined, absolute or common (section {section:#x})"
            ));
        }
        match sym.st_type() {
            elf::STT_GNU_IFUNC => return Err(format!("symbol {index} is an IFUNC")),
            elf::STT_TLS => return Err(format!("symbol {index} is thread-local")),
            _ => {}
        }
        if sym.st_bind() == elf::STB_GNU_UNIQUE {
            return Err(format!("symbol {index} is GNU-unique"));
        }
        // Every symbol names memory of the library; WasmEdge writes the engine's table
        // through `intrinsics`, which must be writable memory of it.
        let value = sym.st_value.get(endian);
        let size = sym.st_size.get(endian).max(1);
        let seg = map
            .segment_of(value, size)
            .ok_or_else(|| format!("symbol {index} points outside the library"))?;
        let name = map.name(strtab, sym.st_name.get(endian))?;
        if name == b"intrinsics" && (seg.flags & elf::PF_W == 0 || size < 8) {
            return Err("`intrinsics` is not 8 writable bytes of the library".into());
        }
        let (code, size_at) = embedded.get();
        match name {
            b"wasm.code" => embedded.set((Some((value, size)), size_at)),
            b"wasm.size" => embedded.set((code, Some(value))),
            _ => {}
        }
        Ok(())
    };
    // Every symbol the loader can reach: DT_HASH's chain covers 0..nchain, GNU_HASH's
    // buckets and chains whatever indices they hold.
    if let Some(hash) = hash {
        let nchain = map.u32(endian, hash + 4)?;
        for index in 0..u64::from(nchain) {
            symbol(index)?;
        }
    }
    if let Some(gnu) = gnu_hash {
        let nbuckets = u64::from(map.u32(endian, gnu)?);
        let symoffset = u64::from(map.u32(endian, gnu + 4)?);
        let bloom_words = u64::from(map.u32(endian, gnu + 8)?);
        let buckets = gnu + 16 + bloom_words * 8;
        let chains = buckets + nbuckets * 4;
        for b in 0..nbuckets {
            let mut index = u64::from(map.u32(endian, buckets + b * 4)?);
            if index == 0 {
                continue;
            }
            if index < symoffset {
                return Err("a GNU hash bucket below its first symbol".into());
            }
            loop {
                symbol(index)?;
                if map.u32(endian, chains + (index - symoffset) * 4)? & 1 == 1 {
                    break;
                }
                index += 1;
            }
        }
    }
    // The module the loader will parse is the one that was compiled, byte for byte: a
    // worker that was taken over cannot hand the root that loads the library other Wasm.
    let (Some((code, _)), Some(size_at)) = embedded.get() else {
        return Err("no embedded module (wasm.code, wasm.size)".into());
    };
    let size = u64::from(map.u32(endian, size_at)?);
    let at = map.offset(code, size)? as usize;
    if data.get(at..at + size as usize) != Some(module) {
        return Err("the embedded module is not the module compiled".into());
    }
    Ok(())
}

/// The library's memory as the loader maps it, read from the file: every read is of an
/// address, translated through the one segment that holds all of it in file-backed bytes.
struct Map<'a> {
    data: &'a [u8],
    loads: &'a [Segment],
}

impl Map<'_> {
    fn segment_of(&self, vaddr: u64, len: u64) -> Option<Segment> {
        self.loads.iter().copied().find(|s| {
            vaddr >= s.vaddr
                && vaddr
                    .checked_add(len)
                    .is_some_and(|end| end <= s.vaddr + s.memsz)
        })
    }

    /// The file offset of `len` bytes at `vaddr`, all within one segment's file bytes.
    fn offset(&self, vaddr: u64, len: u64) -> Result<u64, String> {
        self.loads
            .iter()
            .find(|s| {
                vaddr >= s.vaddr
                    && vaddr
                        .checked_add(len)
                        .is_some_and(|end| end <= s.vaddr + s.filesz)
            })
            .map(|s| s.offset + (vaddr - s.vaddr))
            .ok_or_else(|| format!("address {vaddr:#x} ({len} bytes) in no segment's file bytes"))
    }

    fn read<T: object::Pod>(&self, vaddr: u64) -> Result<&T, String> {
        let at = self.offset(vaddr, std::mem::size_of::<T>() as u64)?;
        self.data
            .read_at(at)
            .map_err(|()| format!("offset {at:#x} outside the file"))
    }

    fn u32(&self, endian: Endianness, vaddr: u64) -> Result<u32, String> {
        Ok(self
            .read::<object::U32Bytes<Endianness>>(vaddr)?
            .get(endian))
    }

    /// The NUL-terminated name at `index` of the string table at `strtab`.
    fn name(&self, strtab: u64, index: u32) -> Result<&[u8], String> {
        let start = strtab + u64::from(index);
        let at = self.offset(start, 1)? as usize;
        let seg_end = self
            .loads
            .iter()
            .find(|s| start >= s.vaddr && start < s.vaddr + s.filesz)
            .map(|s| (s.offset + s.filesz) as usize)
            .unwrap_or(at);
        let bytes = &self.data[at..seg_end.min(self.data.len())];
        let len = bytes
            .iter()
            .position(|&b| b == 0)
            .ok_or("a symbol name without its end")?;
        Ok(&bytes[..len])
    }
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

    /// What WasmEdge writes: functions and constant data, the module embedded, no library,
    /// no relocation.
    const PLAIN: &str = "int f(int x) { return x + 1; }\nconst int table[4] = {1, 2, 3, 4};\n\
        const unsigned char code[] __asm__(\"wasm.code\") = {0, 'a', 's', 'm', 1, 0, 0, 0};\n\
        const unsigned int size __asm__(\"wasm.size\") = 8;\n";
    /// The module [`PLAIN`] embeds.
    const MODULE: &[u8] = b"\0asm\x01\0\0\0";
    const BARE: &[&str] = &["-nostdlib", "-Wl,--hash-style=both", "-Wl,-z,norelro"];

    #[test]
    fn a_library_of_wasmedges_shape_passes() {
        let (_d, lib) = build(PLAIN, BARE);
        check(&lib, MODULE).unwrap();
        // Other Wasm than the module compiled is refused.
        let e = check(&lib, b"\0asm\x01\0\0\x01").unwrap_err().to_string();
        assert!(e.contains("not the module compiled"), "{e}");
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
            let e = check(&lib, MODULE).expect_err(c).to_string();
            assert!(e.contains(why), "{c}: {e}");
        }
    }

    /// The gcc-built plain library's bytes, with `patch` applied to its program header of
    /// type `p_type` (`(header bytes, file bytes)`).
    fn patched(p_type: u32, patch: impl Fn(&mut [u8])) -> Vec<u8> {
        let (_d, lib) = build(PLAIN, BARE);
        let mut data = std::fs::read(lib).unwrap();
        let u16_at = |d: &[u8], at: usize| u16::from_le_bytes([d[at], d[at + 1]]) as usize;
        let phoff = u64::from_le_bytes(data[0x20..0x28].try_into().unwrap()) as usize;
        let (size, count) = (u16_at(&data, 0x36), u16_at(&data, 0x38));
        let at = (0..count)
            .map(|i| phoff + i * size)
            .find(|&at| u32::from_le_bytes(data[at..at + 4].try_into().unwrap()) == p_type)
            .unwrap();
        patch(&mut data[at..at + size]);
        data
    }

    fn check_bytes(data: &[u8]) -> Result<(), String> {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("lib.so");
        std::fs::write(&f, data).unwrap();
        check(&f, MODULE).map_err(|e| e.reason)
    }

    /// The loader reads a library through the memory it maps, not the file's offsets: every
    /// way the two could differ is refused (each was a working bypass of the first check:
    /// code run at dlopen or dlsym).
    #[test]
    fn a_library_whose_mapping_differs_from_its_file_is_refused() {
        let field = |ph: &mut [u8], at: usize, f: &dyn Fn(u64) -> u64| {
            let v = u64::from_le_bytes(ph[at..at + 8].try_into().unwrap());
            ph[at..at + 8].copy_from_slice(&f(v).to_le_bytes());
        };
        // The dynamic segment's offset names other bytes than its address.
        let data = patched(elf::PT_DYNAMIC, |ph| field(ph, 8, &|off| off - 16));
        assert!(check_bytes(&data)
            .unwrap_err()
            .contains("offset and address disagree"));
        // Its DT_NULL outside its size (its six tables' entries only): the loader reads on,
        // past it.
        let data = patched(elf::PT_DYNAMIC, |ph| field(ph, 32, &|_| 6 * 16));
        assert!(check_bytes(&data).unwrap_err().contains("without its end"));
        // A header count the C library does not read where `object` does.
        let (_d, lib) = build(PLAIN, BARE);
        let mut data = std::fs::read(lib).unwrap();
        data[0x38..0x3a].copy_from_slice(&0xffffu16.to_le_bytes());
        assert!(check_bytes(&data).unwrap_err().contains("PN_XNUM"));
        // No stack header: older C libraries make every stack executable.
        let data = patched(elf::PT_GNU_STACK, |ph| {
            ph[..4].copy_from_slice(&elf::PT_NULL.to_le_bytes())
        });
        assert!(check_bytes(&data).is_err());
    }

    #[test]
    fn a_symbol_outside_the_library_is_refused() {
        // `intrinsics` is where WasmEdge writes, as root: an absolute one is any address.
        let abs = "__asm__(\".globl intrinsics\\n.set intrinsics, 0x7f00deadbee0\");\n\
                   int f(int x) { return x + 1; }\n";
        let (_d, lib) = build(abs, BARE);
        let e = check(&lib, MODULE).unwrap_err().to_string();
        assert!(e.contains("absolute"), "{e}");
    }

    #[test]
    fn what_is_no_shared_object_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x.so");
        std::fs::write(&f, b"\x7fELF not really").unwrap();
        assert!(check(&f, MODULE)
            .unwrap_err()
            .to_string()
            .contains("not an ELF64"));
        std::fs::write(&f, []).unwrap();
        assert!(check(&f, MODULE).is_err());
    }
}

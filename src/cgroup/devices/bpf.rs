//! The cgroup v2 device filter: a `BPF_PROG_TYPE_CGROUP_DEVICE` program compiled from a
//! [`Policy`] (runc's layout), loaded and attached with bpf(2).
//!
//! Raw syscalls through `libc`, not a BPF crate: five commands on fixed-layout attributes,
//! where the crates bring either a C build (libbpf) or an ELF-and-links model (aya) whose
//! attachment dies with its file descriptor. Ours must outlive a crashed shim for as long
//! as the cgroup exists, as runc's and systemd's do: a plain `BPF_PROG_ATTACH`.
//!
//! Only little-endian hosts (x86_64, aarch64) are built for: an instruction's register byte
//! is `dst | src << 4` there.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex, OnceLock};

use super::{Class, Policy};

#[cfg(target_endian = "big")]
compile_error!("the device program's encoding is written for little-endian hosts");

const BPF_PROG_LOAD: u32 = 5;
const BPF_PROG_ATTACH: u32 = 8;
const BPF_PROG_DETACH: u32 = 9;
const BPF_PROG_GET_FD_BY_ID: u32 = 13;
const BPF_OBJ_GET_INFO_BY_FD: u32 = 15;
const BPF_PROG_QUERY: u32 = 16;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;
const BPF_F_REPLACE: u32 = 4;
/// The kernel's limit of programs per cgroup and attach type.
const MAX_PROGRAMS: usize = 64;

/// The name the program carries (`bpftool cgroup list` shows it), as systemd's carries
/// `sd_devices`.
pub const NAME: &str = "wasm_devices";

/// One eBPF instruction, as the kernel reads it.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

const _: () = assert!(std::mem::size_of::<Insn>() == 8);

impl Insn {
    const fn new(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
        Insn {
            code,
            regs: dst | (src << 4),
            off,
            imm,
        }
    }
    /// `rD = *(u32 *)(rS + off)`
    const fn load32(dst: u8, src: u8, off: i16) -> Insn {
        Insn::new(0x61, dst, src, off, 0)
    }
    /// `wD &= imm`
    const fn and32(dst: u8, imm: i32) -> Insn {
        Insn::new(0x54, dst, 0, 0, imm)
    }
    /// `wD >>= imm`
    const fn rsh32(dst: u8, imm: i32) -> Insn {
        Insn::new(0x74, dst, 0, 0, imm)
    }
    /// `wD = wS`
    const fn mov32_reg(dst: u8, src: u8) -> Insn {
        Insn::new(0xbc, dst, src, 0, 0)
    }
    /// `wD = imm`
    const fn mov32(dst: u8, imm: i32) -> Insn {
        Insn::new(0xb4, dst, 0, 0, imm)
    }
    /// `if wD != imm goto +off`: a 32-bit compare (JMP32), exact for every u32 number.
    const fn jne32(dst: u8, imm: u32, off: i16) -> Insn {
        Insn::new(0x56, dst, 0, off, imm as i32)
    }
    /// `if wD != wS goto +off`
    const fn jne32_reg(dst: u8, src: u8, off: i16) -> Insn {
        Insn::new(0x5e, dst, src, off, 0)
    }
    const fn exit() -> Insn {
        Insn::new(0x95, 0, 0, 0, 0)
    }
    #[cfg(test)]
    fn dst(&self) -> usize {
        (self.regs & 0xf) as usize
    }
    #[cfg(test)]
    fn src(&self) -> usize {
        (self.regs >> 4) as usize
    }
}

/// The program for `policy`, in runc's layout: a prologue that loads the device's class
/// (r2), the access asked (r3), major (r4) and minor (r5) from `bpf_cgroup_dev_ctx`; one
/// block per exception, which returns the exception's action when everything matches and
/// jumps to the next block at the first mismatch; then the default. Every exception has
/// the same action, so their order does not matter. The same policy gives the same bytes.
pub fn program(policy: &Policy) -> Vec<Insn> {
    let mut out = vec![
        Insn::load32(2, 1, 0),
        Insn::and32(2, 0xffff),
        Insn::load32(3, 1, 0),
        Insn::rsh32(3, 16),
        Insn::load32(4, 1, 4),
        Insn::load32(5, 1, 8),
    ];
    let action = i32::from(!policy.default_allow());
    for (m, access) in policy.exceptions() {
        // Jumps are written with offset 0 and pointed past the block once its length is known.
        let mut block = vec![Insn::jne32(2, class_code(m.class), 0)];
        if *access != super::Access::RWM {
            // The access asked must be within the exception's: (asked & allowed) == asked.
            block.push(Insn::mov32_reg(1, 3));
            block.push(Insn::and32(1, i32::from(access.bits())));
            block.push(Insn::jne32_reg(1, 3, 0));
        }
        if let Some(major) = m.major {
            block.push(Insn::jne32(4, major, 0));
        }
        if let Some(minor) = m.minor {
            block.push(Insn::jne32(5, minor, 0));
        }
        block.push(Insn::mov32(0, action));
        block.push(Insn::exit());
        let len = block.len();
        for (i, insn) in block.iter_mut().enumerate() {
            if matches!(insn.code, 0x56 | 0x5e) {
                insn.off = (len - i - 1) as i16;
            }
        }
        out.extend(block);
    }
    out.push(Insn::mov32(0, i32::from(policy.default_allow())));
    out.push(Insn::exit());
    out
}

/// BPF_DEVCG_DEV_BLOCK and BPF_DEVCG_DEV_CHAR.
fn class_code(c: Class) -> u32 {
    match c {
        Class::Block => 1,
        Class::Char => 2,
    }
}

/// Runs `prog` on one access the way the kernel would: the tests hold the program to
/// [`Policy::allows`]. Knows only the opcodes [`program`] emits.
#[cfg(test)]
pub fn run(prog: &[Insn], class: Class, major: u32, minor: u32, access: super::Access) -> bool {
    let ctx = [
        (u32::from(access.bits()) << 16) | class_code(class),
        major,
        minor,
    ];
    let mut r = [0u64; 11];
    let mut pc = 0usize;
    loop {
        let i = prog[pc];
        pc += 1;
        let jump = |taken: bool, pc: &mut usize| {
            if taken {
                *pc = (*pc as i64 + i64::from(i.off)) as usize;
            }
        };
        match i.code {
            0x61 => r[i.dst()] = u64::from(ctx[(i.off / 4) as usize]),
            0x54 => r[i.dst()] = (r[i.dst()] as u32 & i.imm as u32) as u64,
            0x74 => r[i.dst()] = ((r[i.dst()] as u32) >> i.imm) as u64,
            0xbc => r[i.dst()] = r[i.src()] as u32 as u64,
            0xb4 => r[i.dst()] = i.imm as u32 as u64,
            0x56 => jump(r[i.dst()] as u32 != i.imm as u32, &mut pc),
            0x5e => jump(r[i.dst()] as u32 != r[i.src()] as u32, &mut pc),
            0x95 => return r[0] == 1,
            other => panic!("opcode {other:#x} is not one the device program uses"),
        }
    }
}

/// A loaded device program.
#[derive(Debug)]
pub struct Program {
    fd: OwnedFd,
    id: u32,
}

impl Program {
    /// `BPF_PROG_LOAD`. A verifier refusal comes back with the verifier's log.
    pub fn load(insns: &[Insn]) -> io::Result<Program> {
        let fd = load(insns, &mut []).or_else(|e| {
            if e.raw_os_error() == Some(libc::EPERM) {
                return Err(e);
            }
            let mut log = vec![0u8; 1 << 16];
            match load(insns, &mut log) {
                Ok(fd) => Ok(fd),
                Err(_) => {
                    let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
                    Err(io::Error::new(
                        e.kind(),
                        format!(
                            "load the device program: {e}; verifier: {}",
                            String::from_utf8_lossy(&log[..end]).trim()
                        ),
                    ))
                }
            }
        })?;
        let id = info(fd.as_fd())?.0;
        Ok(Program { fd, id })
    }

    pub fn id(&self) -> u32 {
        self.id
    }
}

impl AsFd for Program {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[repr(C)]
struct LoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
}
const _: () = assert!(std::mem::offset_of!(LoadAttr, prog_name) == 48);

fn load(insns: &[Insn], log: &mut [u8]) -> io::Result<OwnedFd> {
    let mut name = [0u8; 16];
    name[..NAME.len()].copy_from_slice(NAME.as_bytes());
    let license = c"Apache";
    let mut attr = LoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: u32::from(!log.is_empty()),
        log_size: log.len() as u32,
        log_buf: if log.is_empty() {
            0
        } else {
            log.as_mut_ptr() as u64
        },
        kern_version: 0,
        prog_flags: 0,
        prog_name: name,
    };
    // The verifier is interrupted by signals (EAGAIN); runc retries 30 times too.
    let mut tries = 0;
    loop {
        // SAFETY: see `sys_bpf`: `insns`, `license` and `log` outlive the call, and the
        // kernel writes at most `log_size` bytes into `log`.
        match unsafe { sys_bpf(BPF_PROG_LOAD, &mut attr) } {
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) && tries < 30 => tries += 1,
            r => return r.and_then(new_fd),
        }
    }
}

/// A descriptor bpf(2) returned, owned. bpf(2) takes fd 0 as "none" in some attributes, so
/// a program that got fd 0 (stdin closed) is moved off it, as runc does.
fn new_fd(fd: i32) -> io::Result<OwnedFd> {
    // SAFETY: a non-negative result of LOAD or GET_FD_BY_ID is a new descriptor that
    // nothing else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    if fd == 0 {
        return owned.try_clone();
    }
    Ok(owned)
}

#[repr(C)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// A program's id and name (`bpf_prog_info`: id at 4, name at 64).
fn info(fd: BorrowedFd<'_>) -> io::Result<(u32, String)> {
    let mut buf = [0u8; 80];
    let mut attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: buf.len() as u32,
        info: buf.as_mut_ptr() as u64,
    };
    // SAFETY: see `sys_bpf`; the kernel writes at most `info_len` bytes into `buf`.
    unsafe { sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr) }?;
    let id = u32::from_ne_bytes([buf[4], buf[5], buf[6], buf[7]]);
    let name = &buf[64..80];
    let end = name.iter().position(|b| *b == 0).unwrap_or(name.len());
    Ok((id, String::from_utf8_lossy(&name[..end]).into_owned()))
}

/// `BPF_PROG_QUERY`'s attribute, to its `revision` field: from Linux 6.17 to 7.2 the
/// kernel writes `revision` back whatever size the caller passed (opencontainers/cgroups
/// #69), so a shorter attribute would be written past its end.
#[repr(C)]
struct QueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
    prog_attach_flags: u64,
    link_ids: u64,
    link_attach_flags: u64,
    revision: u64,
}
const _: () = assert!(std::mem::size_of::<QueryAttr>() == 64);
const _: () = assert!(std::mem::offset_of!(QueryAttr, revision) == 56);

/// The ids of the device programs attached to the cgroup at `cgroup` (its own, not its
/// ancestors').
pub fn attached(cgroup: BorrowedFd<'_>) -> io::Result<Vec<u32>> {
    let mut ids = vec![0u32; MAX_PROGRAMS];
    let mut attr = QueryAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        query_flags: 0,
        attach_flags: 0,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        _pad: 0,
        prog_attach_flags: 0,
        link_ids: 0,
        link_attach_flags: 0,
        revision: 0,
    };
    // SAFETY: see `sys_bpf`; the kernel writes at most `prog_cnt` ids into `ids`.
    unsafe { sys_bpf(BPF_PROG_QUERY, &mut attr) }?;
    ids.truncate(attr.prog_cnt as usize);
    Ok(ids)
}

/// The names of the programs attached to `cgroup`, for tests and operators; a program an
/// LSM hides is `None`.
pub fn attached_names(cgroup: BorrowedFd<'_>) -> io::Result<Vec<Option<String>>> {
    attached(cgroup)?
        .into_iter()
        .map(|id| {
            Ok(by_id(id)?
                .map(|fd| info(fd.as_fd()))
                .transpose()?
                .map(|i| i.1))
        })
        .collect()
}

#[repr(C)]
struct ByIdAttr {
    prog_id: u32,
    next_id: u32,
    open_flags: u32,
}

/// A descriptor of attached program `id`; `None` where an LSM refuses it (systemd's may be
/// hidden), or it went away meanwhile.
fn by_id(id: u32) -> io::Result<Option<OwnedFd>> {
    let mut attr = ByIdAttr {
        prog_id: id,
        next_id: 0,
        open_flags: 0,
    };
    // SAFETY: see `sys_bpf`.
    match unsafe { sys_bpf(BPF_PROG_GET_FD_BY_ID, &mut attr) } {
        Ok(fd) => new_fd(fd).map(Some),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EPERM | libc::EACCES | libc::ENOENT)
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

#[repr(C)]
struct AttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

fn attach(
    cgroup: BorrowedFd<'_>,
    prog: BorrowedFd<'_>,
    replace: Option<BorrowedFd<'_>>,
) -> io::Result<()> {
    let mut attr = AttachAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        // MULTI always: systemd attaches with it, and flags must agree within a cgroup.
        attach_flags: BPF_F_ALLOW_MULTI | if replace.is_some() { BPF_F_REPLACE } else { 0 },
        replace_bpf_fd: replace.map_or(0, |r| r.as_raw_fd() as u32),
    };
    // SAFETY: see `sys_bpf`.
    unsafe { sys_bpf(BPF_PROG_ATTACH, &mut attr) }.map(drop)
}

fn detach(cgroup: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = AttachAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: 0,
        replace_bpf_fd: 0,
    };
    // SAFETY: see `sys_bpf`.
    match unsafe { sys_bpf(BPF_PROG_DETACH, &mut attr) } {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        r => r.map(drop),
    }
}

/// Makes `prog` the cgroup's device program, runc's way: over exactly one program (systemd's,
/// or ours from before) it is swapped in atomically (`BPF_F_REPLACE`); otherwise it is
/// attached first and the others detached after, so the cgroup is never without a filter
/// (while both are attached, an access needs both to allow it). A program an LSM hides
/// from us stays attached: it can only deny more.
pub fn install(cgroup: BorrowedFd<'_>, prog: &Program) -> io::Result<()> {
    let ids = attached(cgroup)?;
    let ours = ids.contains(&prog.id);
    let mut others = Vec::new();
    for id in ids.iter().filter(|id| **id != prog.id) {
        if let Some(fd) = by_id(*id)? {
            others.push(fd);
        }
    }
    if !ours {
        let replaced = match others.as_slice() {
            [one] => match attach(cgroup, prog.as_fd(), Some(one.as_fd())) {
                Ok(()) => true,
                // A kernel without BPF_F_REPLACE, or the program left meanwhile.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) => false,
                Err(e) => return Err(e),
            },
            _ => false,
        };
        if replaced {
            return Ok(());
        }
        attach(cgroup, prog.as_fd(), None)?;
    }
    for fd in &others {
        detach(cgroup, fd.as_fd())?;
    }
    Ok(())
}

/// Loads `policy`'s program, or takes the one loaded for the same instructions before: a
/// load costs about half a millisecond (the verifier), an attach a few microseconds, and
/// ctr's and CRI's containers share a handful of policies. Each attachment holds its own
/// reference, so a program dropped from here stays on the cgroups it filters.
pub fn program_for(policy: &Policy) -> io::Result<Arc<Program>> {
    /// More distinct policies than this (each device plugin's set is one) start the table
    /// afresh rather than grow it.
    const KEPT: usize = 64;
    static LOADED: OnceLock<Mutex<HashMap<Vec<Insn>, Arc<Program>>>> = OnceLock::new();
    let insns = program(policy);
    let table = LOADED.get_or_init(Default::default);
    if let Some(p) = table.lock().unwrap_or_else(|e| e.into_inner()).get(&insns) {
        return Ok(p.clone());
    }
    let p = Arc::new(Program::load(&insns)?);
    let mut t = table.lock().unwrap_or_else(|e| e.into_inner());
    if t.len() >= KEPT {
        t.clear();
    }
    t.insert(insns, p.clone());
    Ok(p)
}

/// SAFETY (for every caller): `attr` is a live, exclusively borrowed `#[repr(C)]` value of
/// exactly the size passed, whose padding is explicit and zeroed; every pointer stored in
/// it as a u64 points into a borrow that outlives the call, with room for what its length
/// field says; every descriptor in it comes from a `BorrowedFd` and so is open. The kernel
/// writes only inside `attr` and those buffers. Returns the non-negative result or the errno.
unsafe fn sys_bpf<A>(cmd: u32, attr: &mut A) -> io::Result<i32> {
    // SAFETY: the caller's contract above.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            libc::c_long::from(cmd as i32),
            attr as *mut A,
            std::mem::size_of::<A>(),
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as i32)
    }
}

//! Evidence about pages: what the kernel says of one mapping's pages.
//!
//! - [`smaps_of`]: the block of `/proc/PID/smaps` for the mapping that holds
//!   an address (`Rss`, `Shared_Dirty`, `Private_Dirty`, `ShmemPmdMapped`...);
//! - [`pagemap_of`]: the 64-bit `/proc/PID/pagemap` entry of one page: present,
//!   exclusively mapped, and the physical frame number (zero unless the reader
//!   has CAP_SYS_ADMIN, since Linux 4.2);
//! - [`minor_faults`]: the calling thread's `ru_minflt` from `getrusage(2)`,
//!   which a forked child may call (a plain system call: no lock, no
//!   allocation);
//! - [`thp_setting`] and [`pmd_size`]: the transparent huge page settings in
//!   `/sys/kernel/mm/transparent_hugepage`, read only.

use std::os::unix::fs::FileExt;

/// One mapping's block of `/proc/PID/smaps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Smaps {
    /// The mapping's line, as in `/proc/PID/maps` (spaces collapsed).
    pub header: String,
    /// `(field, kB)` in the kernel's order: `Rss`, `Shared_Dirty`...
    pub fields: Vec<(String, u64)>,
}

impl Smaps {
    /// A field in kB (`Private_Dirty`), if the kernel prints it.
    pub fn kib(&self, field: &str) -> Option<u64> {
        self.fields
            .iter()
            .find(|(name, _)| name == field)
            .map(|(_, v)| *v)
    }

    /// `Field: N kB` lines for the fields asked for, as `grep` would show
    /// them (a field this kernel lacks is said to be missing).
    pub fn lines(&self, wanted: &[&str]) -> Vec<String> {
        wanted
            .iter()
            .map(|f| match self.kib(f) {
                Some(v) => format!("{f}: {v} kB"),
                None => format!("{f}: (not in this kernel's smaps)"),
            })
            .collect()
    }
}

/// Parse the text of `/proc/PID/smaps` and keep the block whose range holds
/// `addr`.
pub fn parse_smaps(text: &str, addr: usize) -> Option<Smaps> {
    let mut current: Option<Smaps> = None;
    for line in text.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((lo, hi)) = first.split_once('-') {
            if let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
            {
                if current.is_some() {
                    return current; // the block we wanted has ended
                }
                if lo <= addr && addr < hi {
                    current = Some(Smaps {
                        header: line.split_whitespace().collect::<Vec<_>>().join(" "),
                        fields: Vec::new(),
                    });
                }
                continue;
            }
        }
        if let Some(block) = current.as_mut() {
            if let Some((name, rest)) = line.split_once(':') {
                let mut words = rest.split_whitespace();
                if let (Some(v), Some("kB")) = (words.next(), words.next()) {
                    if let Ok(v) = v.parse() {
                        block.fields.push((name.trim().to_string(), v));
                    }
                }
            }
        }
    }
    current
}

/// The smaps block of the mapping that holds `addr` in process `pid` (use
/// `"self"` for this process).
pub fn smaps_of(pid: impl std::fmt::Display, addr: usize) -> Option<Smaps> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    parse_smaps(&text, addr)
}

/// One page's entry of `/proc/PID/pagemap` (Documentation/admin-guide/mm/
/// pagemap.rst): bit 63 present, 62 swapped, 61 file page or shared
/// anonymous, 56 exclusively mapped, bits 0-54 the frame number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PagemapEntry(pub u64);

impl PagemapEntry {
    pub fn present(self) -> bool {
        self.0 >> 63 & 1 == 1
    }

    /// Mapped by this process only (bit 56, since Linux 4.2).
    pub fn exclusive(self) -> bool {
        self.0 >> 56 & 1 == 1
    }

    /// A page of a file or of shared anonymous memory (bit 61).
    pub fn file_or_shared(self) -> bool {
        self.0 >> 61 & 1 == 1
    }

    /// The physical frame number: 0 when the reader lacks CAP_SYS_ADMIN.
    pub fn pfn(self) -> u64 {
        self.0 & ((1 << 55) - 1)
    }
}

impl std::fmt::Display for PagemapEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "present={} exclusive={} file/shared={} pfn={:#x}",
            u8::from(self.present()),
            u8::from(self.exclusive()),
            u8::from(self.file_or_shared()),
            self.pfn()
        )
    }
}

/// Read the pagemap entry of the page holding `addr` in process `pid`:
/// `pread(fd, &entry, 8, addr / page_size * 8)`.
pub fn pagemap_of(pid: impl std::fmt::Display, addr: usize) -> std::io::Result<PagemapEntry> {
    let f = std::fs::File::open(format!("/proc/{pid}/pagemap"))?;
    let mut buf = [0u8; 8];
    let page = crate::inspect::page_size();
    f.read_exact_at(&mut buf, (addr / page * 8) as u64)?;
    Ok(PagemapEntry(u64::from_ne_bytes(buf)))
}

/// The calling thread's minor page faults so far (`ru_minflt` of
/// `getrusage(RUSAGE_THREAD)`): not the process's, so that another thread
/// (the cleanup thread of [`crate::run`]) faulting meanwhile does not count.
/// In a forked child, the only thread, it is the process's. Safe to call
/// there: a plain system call that takes no lock and allocates nothing.
pub fn minor_faults() -> i64 {
    // SAFETY: getrusage writes one struct rusage, which we own, zeroed.
    unsafe {
        let mut r: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_THREAD, &mut r);
        r.ru_minflt
    }
}

/// The directory of the transparent huge page settings.
pub const THP_DIR: &str = "/sys/kernel/mm/transparent_hugepage";

/// A THP setting as the kernel shows it (`always within_size advise [never]
/// deny force`), and the chosen value (the word in brackets).
pub fn thp_setting(file: &str) -> Option<(String, String)> {
    let text = std::fs::read_to_string(format!("{THP_DIR}/{file}")).ok()?;
    let text = text.trim().to_string();
    let chosen = text
        .split_whitespace()
        .find_map(|w| w.strip_prefix('[')?.strip_suffix(']'))
        .unwrap_or(&text)
        .to_string();
    Some((text, chosen))
}

/// The size of a PMD-mapped huge page (`hpage_pmd_size`), if THP is built in.
pub fn pmd_size() -> Option<usize> {
    std::fs::read_to_string(format!("{THP_DIR}/hpage_pmd_size"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
7f0000000000-7f0000001000 rw-s 00000000 00:1a 42       /dev/shm/x
Size:                  4 kB
Rss:                   4 kB
Shared_Dirty:          4 kB
Private_Dirty:         0 kB
ShmemPmdMapped:        0 kB
VmFlags: rd wr sh mr mw me ms sd
7f0000001000-7f0000003000 rw-p 00000000 00:00 0
Size:                  8 kB
Private_Dirty:         8 kB
";

    #[test]
    fn finds_the_block_of_an_address() {
        let s = parse_smaps(SMAPS, 0x7f00_0000_0800).unwrap();
        assert!(s.header.starts_with("7f0000000000-7f0000001000 rw-s"));
        assert_eq!(s.kib("Shared_Dirty"), Some(4));
        assert_eq!(s.kib("Private_Dirty"), Some(0));
        assert_eq!(s.kib("VmFlags"), None);
        let t = parse_smaps(SMAPS, 0x7f00_0000_2000).unwrap();
        assert_eq!(t.kib("Private_Dirty"), Some(8));
        assert!(parse_smaps(SMAPS, 0x1000).is_none());
    }

    #[test]
    fn our_own_page_is_present_and_exclusive() {
        let v = vec![1u8; crate::inspect::page_size() * 2];
        let addr = v.as_ptr() as usize;
        let e = pagemap_of("self", addr).unwrap();
        assert!(e.present() && e.exclusive(), "{e}");
        assert!(smaps_of("self", addr).is_some());
    }

    #[test]
    fn a_write_to_a_fresh_page_is_one_minor_fault() {
        let page = crate::inspect::page_size();
        // SAFETY: a fresh private anonymous mapping at a kernel-chosen address.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let before = minor_faults();
        // SAFETY: p is a live, writable, page-aligned mapping of ours.
        unsafe { p.cast::<u8>().write_volatile(1) };
        let after = minor_faults();
        // Another thread of the test harness may fault meanwhile: at least 1.
        assert!(after - before >= 1);
        // SAFETY: unmapping our own mapping.
        unsafe { libc::munmap(p, page) };
    }
}
